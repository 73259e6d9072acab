//! The system on clusters (scripts/cluster.sh), nodes killed under load: a three-node
//! RabbitMQ 4.0.5 cluster whose quorum queues have a member on every node, and a
//! PostgreSQL primary with two synchronous standbys. `make test` runs these alone, one
//! at a time (they kill the shared RabbitMQ nodes): `cargo test -- cluster_ --ignored
//! --test-threads=1`.
//!
//! What is held (issue #27): nothing lost, no effect twice, and publishing or consuming
//! resumes within 15 s of a RabbitMQ node loss that leaves a majority; writes resume
//! within 20 s of a PostgreSQL failover, without restarting any process.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use amqprs::channel::{BasicGetArguments, QueueDeleteArguments};
use order_service::amqp::{self, Nodes, Publisher, QueueType, Topology};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::{
    TestApp,
    broker::TestBroker,
    cluster::{PgCluster, RabbitCluster},
    eventually,
    proxy::FaultProxy,
    relay::TestRelay,
    saga::{TestWorker, reply, settled},
};

/// A node loss that leaves a majority is over for the clients within this.
const RESUMES_WITHIN: Duration = Duration::from_secs(15);

/// `OrderCreated` events written, published or not: one per approved order.
const ORDER_CREATED: &str = "SELECT count(*) FROM (SELECT event_type FROM outbox UNION ALL
                                                   SELECT event_type FROM outbox_published) AS e
                              WHERE event_type = 'OrderCreated'";

/// The contract's names behind a prefix of the test's own, quorum queues.
fn topology() -> Topology {
    Topology::named(&format!("c{}-", &Uuid::new_v4().simple().to_string()[..8]), QueueType::Quorum)
}

/// The message ids waiting in `queue`, taken (acked) through any live node.
async fn take_all(nodes: &Nodes, queue: &str) -> Vec<String> {
    let connection = amqp::connect(nodes).await.unwrap();
    let channel = connection.open_channel(None).await.unwrap();
    let mut args = BasicGetArguments::new(queue);
    args.no_ack = true;
    let mut ids = Vec::new();
    while let Some((_, properties, _)) = channel.basic_get(args.clone()).await.unwrap() {
        ids.push(properties.message_id().cloned().unwrap_or_default());
    }
    let _ = connection.close().await;
    ids
}

/// Deletes the test's queues (the exchanges are left: they cost nothing).
async fn delete_queues(nodes: &Nodes, topology: &Topology) {
    let connection = amqp::connect(nodes).await.unwrap();
    let channel = connection.open_channel(None).await.unwrap();
    for queue in
        [&topology.orders_queue, &topology.order_saga_queue, &topology.customer_saga_queue, &topology.dead_letter_queue]
    {
        let _ = channel.queue_delete(QueueDeleteArguments::new(queue)).await;
    }
    let _ = connection.close().await;
}

/// The event ids the relay has published, as the outbox recorded them.
async fn published_event_ids(db: &PgPool, event_type: &str) -> HashSet<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox_published WHERE event_type = $1")
        .bind(event_type)
        .fetch_all(db)
        .await
        .unwrap();
    ids.into_iter().map(|id| id.to_string()).collect()
}

/// The relay's node killed while orders keep coming: every order's request reaches
/// `OrderSaga` (through the other nodes), none is lost, and the first order placed after
/// the kill is published within [`RESUMES_WITHIN`].
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/cluster.sh (root, the RabbitMQ 4 root): make test runs it"]
async fn cluster_publishing_resumes_when_the_relays_node_is_killed(db: PgPool) {
    let Some(cluster) = RabbitCluster::start() else { return };
    let topology = topology();
    let name = format!("{}relay", topology.exchange);
    let app = TestApp::new(db.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (stop, stopped) = watch::channel(false);
    let relay = TestRelay::on(&db, cluster.nodes(&name), topology.clone()).batch_size(100).build();
    let running = tokio::spawn(relay.run(stopped));
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(app.place_order(&[phone]).await.order);
    }
    let queue = topology.order_saga_queue.clone();
    let watcher = cluster.nodes("watcher");
    let depth = |n: u32| {
        let (watcher, queue) = (watcher.clone(), queue.clone());
        async move { amqp::queue_depth(&watcher, &queue).await.is_ok_and(|d| d >= n) }
    };
    assert!(eventually(Duration::from_secs(20), || depth(20)).await, "the first 20 never arrived");

    let node = cluster.node_of_connection(&[1, 2, 3], &name).expect("the relay's connection is on a node");
    cluster.kill(node);
    let killed = Instant::now();
    orders.push(app.place_order(&[phone]).await.order);
    let resumed = eventually(Duration::from_secs(60), || depth(21)).await;
    let recovery = killed.elapsed();
    println!("relay: node {node} killed; the next order published after {recovery:?}");
    assert!(resumed && recovery <= RESUMES_WITHIN, "publishing resumed after {recovery:?}");
    for _ in 0..20 {
        orders.push(app.place_order(&[phone]).await.order);
    }
    assert!(
        eventually(Duration::from_secs(30), || depth(41)).await,
        "orders placed after the kill were not all published"
    );

    stop.send(true).unwrap();
    running.await.unwrap();
    let received: HashSet<String> = take_all(&watcher, &queue).await.into_iter().collect();
    let published = published_event_ids(&db, "OrderCreateSaga").await;
    assert_eq!(published.len(), orders.len(), "every order's request was published");
    assert!(published.is_subset(&received), "lost: {:?}", published.difference(&received).collect::<Vec<_>>());
    cluster.restore();
    delete_queues(&watcher, &topology).await;
}

/// Every node killed at once (a machine restarted, a whole cluster lost): the cluster
/// comes back, and a message confirmed before is still there. Each node of a cluster
/// whose peers all went down waits for them before it boots, so `cluster.sh` must start
/// them together (CI on b668bea: node 1 alone never booted within 180 s).
///
/// The message goes to a queue declared seconds earlier, as the system's processes
/// declare theirs at start-up. A message confirmed by a queue declared within the same
/// second as the crash was lost in 6 of 8 runs here (RabbitMQ 4.0.5; declared 2 s or
/// 8 s before, it was kept in 3 of 3): the test measures that case too and prints it.
#[test]
#[ignore = "needs scripts/cluster.sh (root, the RabbitMQ 4 root): make test runs it"]
fn cluster_comes_back_after_every_node_was_killed() {
    let Some(cluster) = RabbitCluster::start() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (settled, fresh) = (topology(), topology());
    let nodes = cluster.nodes("whole-cluster");
    let (kept, at_once) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    runtime.block_on(async {
        let mut publisher = Publisher::connect(&nodes, &settled).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        publisher.publish_one(&settled.customer_reply(kept.clone(), b"{}".to_vec())).await.unwrap();
        publisher.close().await;
        let mut publisher = Publisher::connect(&nodes, &fresh).await.unwrap();
        publisher.publish_one(&fresh.customer_reply(at_once.clone(), b"{}".to_vec())).await.unwrap();
        publisher.close().await;
    });
    for n in 1..=3 {
        cluster.kill(n);
    }
    let killed = Instant::now();
    cluster.restore();
    println!("every node killed; the cluster back after {:?}", killed.elapsed());
    assert_eq!(cluster.running_nodes(), [1, 2, 3]);
    runtime.block_on(async {
        // A queue answers once its members have elected a leader again.
        let queue = &settled.customer_saga_queue;
        let holds = || async { amqp::queue_depth(&nodes, queue).await.is_ok_and(|depth| depth == 1) };
        assert!(eventually(Duration::from_secs(30), holds).await, "the confirmed message is not in {queue}");
        assert_eq!(take_all(&nodes, queue).await, [kept]);
        // That queue may be empty, or not answer at all.
        let fresh_depth = amqp::queue_depth(&nodes, &fresh.customer_saga_queue).await;
        println!("the message confirmed by a queue declared at once: {fresh_depth:?} in it ({at_once})");
        delete_queues(&nodes, &settled).await;
        delete_queues(&nodes, &fresh).await;
    });
}

/// The node leading `CustomerSaga` killed while a worker consumes: replies sent after
/// the kill are applied, each once, within [`RESUMES_WITHIN`].
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/cluster.sh (root, the RabbitMQ 4 root): make test runs it"]
async fn cluster_consuming_resumes_when_the_saga_queues_leader_is_killed(db: PgPool) {
    let Some(cluster) = RabbitCluster::start() else { return };
    let topology = topology();
    let app = TestApp::new(db.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let prefix = topology.exchange.clone();
    let worker = TestWorker::on(
        &app,
        cluster.nodes(&format!("{prefix}worker")),
        cluster.nodes(&format!("{prefix}worker-dlq")),
        topology.clone(),
    )
    .start();
    let before = app.place_order(&[phone]).await.order;
    let customer = cluster.nodes(&format!("{prefix}customer"));
    let send = |order: Uuid, id: String| {
        let (customer, topology) = (customer.clone(), topology.clone());
        async move {
            // As the customer service would: again on another node until confirmed.
            loop {
                if let Ok(mut publisher) = Publisher::connect(&customer, &topology).await {
                    let sent =
                        publisher.publish_one(&topology.customer_reply(id.clone(), reply(order, "Approved"))).await;
                    publisher.close().await;
                    if sent.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    send(before, format!("reply-{before}")).await;
    assert!(settled(&app, before, "Approved").await, "no reply applied before the kill");

    let leader = cluster.leader_of(&[1, 2, 3], &topology.customer_saga_queue);
    let after: Vec<Uuid> = {
        let mut placed = Vec::new();
        for _ in 0..10 {
            placed.push(app.place_order(&[phone]).await.order);
        }
        placed
    };
    cluster.kill(leader);
    let killed = Instant::now();
    for order in &after {
        send(*order, format!("reply-{order}")).await;
    }
    // The same replies again: a redelivery after the leader change applies nothing twice.
    for order in &after {
        send(*order, format!("reply-{order}")).await;
    }
    for order in &after {
        assert!(
            eventually(Duration::from_secs(60), || async { settled(&app, *order, "Approved").await }).await,
            "order {order} never approved"
        );
    }
    let recovery = killed.elapsed();
    println!("worker: leader node {leader} of CustomerSaga killed; ten replies applied {recovery:?} after");
    assert!(recovery <= RESUMES_WITHIN, "consuming resumed after {recovery:?}");
    let created: i64 = sqlx::query_scalar(ORDER_CREATED).fetch_one(&db).await.unwrap();
    assert_eq!(created, 11, "one OrderCreated per approved order, none twice");
    worker.stop().await;
    cluster.restore();
    delete_queues(&customer, &topology).await;
}

/// Two nodes killed at once: no majority for 20 s, so no quorum queue takes a message
/// or hands one out; orders keep being taken (their events wait in the outbox). Both
/// nodes back, every event is published and every reply applied within
/// [`RESUMES_WITHIN`] of the majority's return, none lost, none applied twice.
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/cluster.sh (root, the RabbitMQ 4 root): make test runs it"]
async fn cluster_publishing_and_consuming_resume_when_the_majority_returns(db: PgPool) {
    let Some(cluster) = RabbitCluster::start() else { return };
    let topology = topology();
    let prefix = topology.exchange.clone();
    let app = TestApp::new(db.clone());
    let phone = app.create_product("Phone", 10.0, 0).await;
    let (stop, stopped) = watch::channel(false);
    let relay = TestRelay::on(&db, cluster.nodes(&format!("{prefix}relay")), topology.clone()).build();
    let running = tokio::spawn(relay.run(stopped));
    let worker = TestWorker::on(
        &app,
        cluster.nodes(&format!("{prefix}worker")),
        cluster.nodes(&format!("{prefix}worker-dlq")),
        topology.clone(),
    )
    .start();
    let watcher = cluster.nodes("watcher");
    let queue = topology.order_saga_queue.clone();
    let depth = |n: u32| {
        let (watcher, queue) = (watcher.clone(), queue.clone());
        async move { amqp::queue_depth(&watcher, &queue).await.is_ok_and(|d| d >= n) }
    };
    let mut orders = vec![app.place_order(&[phone]).await.order];
    assert!(eventually(Duration::from_secs(20), || depth(1)).await, "nothing published before the kill");

    cluster.kill(2);
    cluster.kill(3);
    let without_majority = Instant::now();
    while without_majority.elapsed() < Duration::from_secs(20) {
        orders.push(app.place_order(&[phone]).await.order);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cluster.restore();
    let back = Instant::now();
    let all = orders.len() as u32;
    assert!(eventually(Duration::from_secs(60), || depth(all)).await, "not every order was published");
    let published_after = back.elapsed();
    let customer = cluster.nodes(&format!("{prefix}customer"));
    let mut publisher = Publisher::connect(&customer, &topology).await.unwrap();
    for order in &orders {
        let sent =
            publisher.publish_one(&topology.customer_reply(format!("reply-{order}"), reply(*order, "Approved"))).await;
        assert_eq!(sent, Ok(()));
    }
    publisher.close().await;
    for order in &orders {
        assert!(settled(&app, *order, "Approved").await, "order {order} never approved");
    }
    let applied_after = back.elapsed();
    println!(
        "majority lost for 20 s ({} orders taken meanwhile); after its return: every event published in {published_after:?}, every reply applied by {applied_after:?}",
        orders.len() - 1
    );
    assert!(published_after <= RESUMES_WITHIN, "publishing resumed after {published_after:?}");
    assert!(applied_after <= RESUMES_WITHIN, "consuming resumed after {applied_after:?}");
    let created: i64 = sqlx::query_scalar(ORDER_CREATED).fetch_one(&db).await.unwrap();
    assert_eq!(created as usize, orders.len(), "one OrderCreated per order, none twice");
    stop.send(true).unwrap();
    running.await.unwrap();
    worker.stop().await;
    let received: HashSet<String> = take_all(&watcher, &queue).await.into_iter().collect();
    let published = published_event_ids(&db, "OrderCreateSaga").await;
    assert!(published.is_subset(&received), "lost: {:?}", published.difference(&received).collect::<Vec<_>>());
    delete_queues(&watcher, &topology).await;
}

/// A PostgreSQL cluster of the test's own behind a stable address (a proxy standing in
/// for CloudNativePG's `-rw` Service), migrated; the api and a relay (to the test's broker)
/// on that address; a user with an address and a product to order.
struct Failover {
    pg: PgCluster,
    address: FaultProxy,
    pool: PgPool,
    broker: TestBroker,
    relay: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    order: serde_json::Value,
}

impl Failover {
    async fn start(sync: bool) -> Option<Self> {
        let pg = PgCluster::start(sync)?;
        let primary = pg.url(pg.port, "postgres");
        order_service::db::migrate(&primary).await.unwrap();
        let address = FaultProxy::start(&format!("127.0.0.1:{}", pg.port)).await;
        let url = format!("{}?sslmode=disable", address.url(&primary));
        let pool = order_service::db::connect(&url, 8, order_service::server::SESSION_SETTINGS, Default::default())
            .unwrap()
            .pool()
            .clone();
        let app = TestApp::builder(pool.clone()).pool(pool.clone()).build();
        let broker = TestBroker::new().await;
        let (stop, stopped) = watch::channel(false);
        let relay = Some((stop, tokio::spawn(TestRelay::new(&pool, &broker).build().run(stopped))));
        let phone = app.create_product("Phone", 10.0, 0).await;
        let address_id = app.create_address().await;
        let user = app.create_user("failover", address_id).await;
        let order = serde_json::json!({"paymentMethod": "Online", "productsIds": [phone], "userID": user,
                                       "deliveryAddress": address_id});
        Some(Failover { pg, address, pool, broker, relay, order })
    }

    /// Orders placed one after the other for `seconds`, through whatever happens
    /// meanwhile: the ids answered 204, with when.
    fn place_orders_for(&self, seconds: u64) -> tokio::task::JoinHandle<Vec<(Uuid, Instant)>> {
        let app = TestApp::builder(self.pool.clone()).pool(self.pool.clone()).build();
        let template = self.order.clone();
        tokio::spawn(async move {
            let (deadline, mut answered) = (Instant::now() + Duration::from_secs(seconds), Vec::new());
            while Instant::now() < deadline {
                let (order, mut body) = (Uuid::new_v4(), template.clone());
                body["orderID"] = serde_json::json!(order);
                if app.post("/api/v1/orders/", &body).await.status.as_u16() == 204 {
                    answered.push((order, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answered
        })
    }

    /// Kills every process of the primary, promotes standby1 and moves the address to it:
    /// when the primary died, and the new primary's port.
    async fn fail_over(&self) -> (Instant, u16) {
        self.pg.kill("primary");
        let killed = Instant::now();
        let new_port = self.pg.promote(1);
        self.address.redirect(&format!("127.0.0.1:{new_port}")).await;
        self.address.close_all();
        (killed, new_port)
    }

    /// Stops the relay; the address, and what is behind it, stay.
    async fn stop_relay(&mut self) {
        let (stop, running) = self.relay.take().expect("the relay runs");
        stop.send(true).unwrap();
        running.await.unwrap();
    }

    /// The orders the server on `port` holds.
    async fn orders_on(&self, port: u16) -> HashSet<Uuid> {
        let server = sqlx::PgPool::connect(&self.pg.url(port, "postgres")).await.unwrap();
        sqlx::query_scalar("SELECT id FROM orders").fetch_all(&server).await.unwrap().into_iter().collect()
    }

    /// The orders whose saga request the relay published.
    async fn published_orders(broker: &TestBroker) -> Vec<Uuid> {
        let published = broker.drain(&broker.topology.order_saga_queue).await;
        published.iter().map(|m| m.body["orderID"].as_str().and_then(|o| o.parse().ok()).unwrap()).collect()
    }
}

/// The PostgreSQL primary killed (every process of it) under a stream of orders, a
/// synchronous standby promoted and the stable address moved to it, as CloudNativePG's
/// `-rw` Service moves: every order answered 204 is on the new primary, no event was
/// published for an order it lacks, and writes resume within 20 s without restarting
/// the api or the relay.
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/cluster.sh (root, PostgreSQL's binaries): make test runs it"]
async fn cluster_a_synchronous_standby_takes_over_with_every_answered_order(_db: PgPool) {
    let Some(mut failover) = Failover::start(true).await else { return };
    let placing = failover.place_orders_for(40);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (killed, new_port) = failover.fail_over().await;
    let answered = placing.await.unwrap();
    let first_after =
        answered.iter().map(|(_, at)| *at).find(|at| *at > killed).expect("no order answered after the kill");
    let recovery = first_after - killed;
    println!(
        "postgres: primary killed; {} orders answered, the first after the kill {recovery:?} later",
        answered.len()
    );
    assert!(recovery <= Duration::from_secs(20), "writes resumed after {recovery:?}");

    let kept = failover.orders_on(new_port).await;
    let lost: Vec<_> = answered.iter().filter(|(order, _)| !kept.contains(order)).collect();
    assert!(lost.is_empty(), "answered 204 but not on the new primary: {lost:?}");
    // Every event the relay published is of an order the new primary has.
    let broker = &failover.broker;
    assert!(
        eventually(Duration::from_secs(20), || async {
            amqp::queue_depth(&broker.args("depth"), &broker.topology.order_saga_queue).await.unwrap_or(0) as usize
                >= answered.len()
        })
        .await,
        "not every answered order's request was published"
    );
    failover.stop_relay().await;
    let broker = &failover.broker;
    for order in Failover::published_orders(broker).await {
        assert!(kept.contains(&order), "an event was published for order {order}, which the new primary lacks");
    }
    let Failover { broker, .. } = failover;
    broker.cleanup().await;
}

/// The same failover with asynchronous replication, the standbys behind: the primary's
/// WAL senders are paused for 2 s under load (as a slow network or disk leaves them
/// behind), then the primary is killed and a standby promoted. What an acknowledged order
/// can lose, measured: the orders answered 204 while the standbys were behind are not on
/// the new primary; the relay may have published their requests from the old primary;
/// the customer service's replies to those orders are dead-lettered as `unknown_order`
/// (for an operator: `saga-worker dlq list`), and change nothing. (Synchronous
/// replication, above, loses none: a commit no standby confirmed is never answered.)
#[sqlx::test(migrations = "../migrations")]
#[ignore = "needs scripts/cluster.sh (root, PostgreSQL's binaries): make test runs it"]
async fn cluster_asynchronous_replication_loses_what_the_standbys_had_not_received(_db: PgPool) {
    let Some(mut failover) = Failover::start(false).await else { return };
    let placing = failover.place_orders_for(15);
    tokio::time::sleep(Duration::from_secs(4)).await;
    failover.pg.pause_wal_senders();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, new_port) = failover.fail_over().await;
    let answered: Vec<Uuid> = placing.await.unwrap().into_iter().map(|(order, _)| order).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = failover.orders_on(new_port).await;
    let app = TestApp::builder(failover.pool.clone()).pool(failover.pool.clone()).build();
    let new_primary = sqlx::PgPool::connect(&failover.pg.url(new_port, "postgres")).await.unwrap();
    let lost: HashSet<Uuid> = answered.iter().copied().filter(|order| !kept.contains(order)).collect();
    failover.stop_relay().await;
    let broker = &failover.broker;
    let published = Failover::published_orders(broker).await;
    let published_for_lost: Vec<Uuid> = published.iter().copied().filter(|order| lost.contains(order)).collect();
    println!(
        "postgres async: {} orders answered 204, {} of them not on the new primary; {} requests published for those",
        answered.len(),
        lost.len(),
        published_for_lost.len()
    );
    assert!(!lost.is_empty(), "2 s of commits the standbys never received: some answered orders must be gone");

    // The customer service answers what it received: a reply to an order the new primary
    // lacks is dead-lettered, and changes nothing.
    let worker =
        TestWorker::on(&app, broker.args("worker"), broker.args("worker-dlq"), broker.topology.clone()).start();
    // (Should the relay have published none of them, the same replies to lost orders.)
    let answered_for: Vec<Uuid> =
        if published_for_lost.is_empty() { lost.iter().copied().collect() } else { published_for_lost.clone() };
    let answered_for: Vec<Uuid> = answered_for.into_iter().take(5).collect();
    for order in &answered_for {
        crate::helpers::saga::send_reply(broker, &reply(*order, "Approved"), &format!("reply-{order}")).await;
    }
    let dead_lettered = eventually(Duration::from_secs(20), || async {
        amqp::queue_depth(&broker.args("depth"), &broker.topology.dead_letter_queue).await.unwrap_or(0) as usize
            == answered_for.len()
    })
    .await;
    worker.stop().await;
    assert!(dead_lettered, "the replies to lost orders were not dead-lettered");
    let letters = broker.drain(&broker.topology.dead_letter_queue).await;
    assert!(
        letters.iter().all(|l| l.header("x-poison-kind").as_deref() == Some("unknown_order")),
        "{:?}",
        letters.iter().map(|l| l.header("x-poison-kind")).collect::<Vec<_>>()
    );
    let created: i64 = sqlx::query_scalar(ORDER_CREATED).fetch_one(&new_primary).await.unwrap();
    assert_eq!(created, 0, "a reply to a lost order changed nothing");
    let Failover { broker, .. } = failover;
    broker.cleanup().await;
}

//! The AMQP URL of the settings, turned into amqprs's connection arguments: one set per
//! node it names.

use amqprs::connection::OpenConnectionArguments;
use percent_encoding::percent_decode_str;

use super::Nodes;

/// Parses `amqp://user:pass@host:port/vhost?heartbeat=N`, or, for the nodes of a cluster,
/// `amqp://user:pass@host1:port1,host2:port2,host3:port3/vhost` (the credentials, vhost
/// and heartbeat are every node's). The vhost is percent-decoded (`%2f` is `/`), which
/// amqprs's own URI parsing does not do.
pub fn connection_args(amqp_url: &str, connection_name: &str) -> Result<Nodes, String> {
    let (scheme, rest) = amqp_url.split_once("://").ok_or("not a URL")?;
    if scheme != "amqp" {
        return Err(format!("scheme must be amqp, not {scheme}"));
    }
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    };
    let nodes = hosts
        .split(',')
        .map(|host| node_args(&format!("amqp://{credentials}{}{tail}", host.trim()), connection_name))
        .collect::<Result<Vec<_>, _>>()?;
    Nodes::new(nodes).ok_or_else(|| "no host".to_owned())
}

/// One node's arguments, from a URL naming one host.
fn node_args(amqp_url: &str, connection_name: &str) -> Result<OpenConnectionArguments, String> {
    let url = url::Url::parse(amqp_url).map_err(|e| e.to_string())?;
    if url.scheme() != "amqp" {
        return Err(format!("scheme must be amqp, not {}", url.scheme()));
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|s| s.into_owned()).map_err(|e| e.to_string());
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    let user = match url.username() {
        "" => "guest".to_owned(),
        user => decode(user)?,
    };
    let password = decode(url.password().unwrap_or("guest"))?;
    let vhost = match url.path() {
        "" | "/" => "/".to_owned(),
        path => decode(&path[1..])?,
    };
    let heartbeat = url
        .query_pairs()
        .find(|(key, _)| key == "heartbeat")
        // amqprs waits heartbeat/2 whole seconds between beats: 1 would spin. 0 turns
        // heartbeats off, and a half-open TCP connection (a broker host gone without a
        // FIN) would never be noticed: refused.
        .map(|(_, value)| {
            value
                .parse::<u16>()
                .ok()
                .filter(|s| *s >= 2)
                .ok_or(format!("heartbeat must be at least 2 seconds, not {value:?}"))
        })
        .transpose()?
        // A lost broker is noticed within two heartbeats.
        .unwrap_or(5);
    let mut args = OpenConnectionArguments::new(host, url.port().unwrap_or(5672), &user, &password);
    args.virtual_host(&vhost).heartbeat(heartbeat).connection_name(connection_name);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> OpenConnectionArguments {
        let nodes = connection_args(url, "t").unwrap();
        assert_eq!(nodes.nodes().len(), 1, "{url}");
        nodes.nodes()[0].clone()
    }

    #[test]
    fn the_default_url_means_the_root_vhost() {
        let args = one("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(args.get_virtual_host(), "/");
        assert_eq!(args.get_host(), "127.0.0.1");
        assert_eq!(args.get_port(), 5672);
        assert_eq!(args.get_heartbeat(), 5);
    }

    #[test]
    fn urls_are_percent_decoded() {
        let args = one("amqp://us%40r:p%3Ass@rabbit/orders%2Fprod?heartbeat=10");
        assert_eq!(args.get_virtual_host(), "orders/prod");
        assert_eq!(args.get_port(), 5672);
        assert_eq!(args.get_heartbeat(), 10);
    }

    #[test]
    fn every_node_the_url_names_shares_its_credentials_vhost_and_heartbeat() {
        let nodes =
            connection_args("amqp://u:p%40ss@rabbit-0:5674, rabbit-1,127.0.0.1:5676/orders?heartbeat=8", "t").unwrap();
        let seen: Vec<_> = nodes
            .nodes()
            .iter()
            .map(|n| (n.get_host().to_owned(), n.get_port(), n.get_virtual_host().to_owned(), n.get_heartbeat()))
            .collect();
        assert_eq!(
            seen,
            [
                ("rabbit-0".to_owned(), 5674, "orders".to_owned(), 8),
                ("rabbit-1".to_owned(), 5672, "orders".to_owned(), 8),
                ("127.0.0.1".to_owned(), 5676, "orders".to_owned(), 8),
            ]
        );
        assert_eq!(format!("{nodes:?}"), r#"["rabbit-0:5674", "rabbit-1:5672", "127.0.0.1:5676"]"#, "no password");
        assert!(connection_args("amqp://u:p@rabbit-0,/x", "t").is_err(), "an empty host");
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(connection_args("http://x", "t").is_err());
        assert!(connection_args("amqp://", "t").is_err());
        assert!(connection_args("amqp://h/?heartbeat=often", "t").is_err());
        assert!(connection_args("amqp://h/?heartbeat=1", "t").is_err());
        assert!(connection_args("amqp://h/?heartbeat=0", "t").is_err(), "a dead peer would never be noticed");
    }
}

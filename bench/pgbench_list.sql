-- The SELECT behind GET /api/v1/orders/?limit=20 (orders/mod.rs, ListOrders, ascending).
SELECT id, user_id, order_status, saga_status, payment_method, serial_number, total_price,
       created_at, client_name, address, products
  FROM order_views
 WHERE id = ANY(ARRAY(SELECT id FROM orders WHERE saga_status = 'Approved' AND NOT deleted
                       ORDER BY created_at, id LIMIT 20 OFFSET 0))
 ORDER BY created_at, id;

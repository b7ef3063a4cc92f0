//! Webhooks as Monime sends them, signed here independently of the production code.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const SECRET: &str = "whsec_test_primary";
pub const ROTATED_SECRET: &str = "whsec_test_next";

/// `t=<ts>,v1=<base64 HMAC-SHA256(secret, "<ts>_<body>")>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    let mut signed = format!("{timestamp}_").into_bytes();
    signed.extend_from_slice(body);
    mac.update(&signed);
    let digest = mac.finalize().into_bytes();
    format!("t={timestamp},v1={}", STANDARD.encode(digest))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn payment_completed(event_id: &str, payment_id: &str) -> Value {
    json!({
        "apiVersion": "caph.2025-08-23",
        "event": {"id": event_id, "name": "payment.completed", "timestamp": "2026-11-21T10:00:00Z"},
        "object": {"id": payment_id, "type": "payment"},
        "data": {
            "id": payment_id,
            "status": "completed",
            "amount": {"currency": "SLE", "value": 50000},
            "financialTransactionReference": format!("txn-{payment_id}"),
            "metadata": {
                "company_id": "co-1",
                "route_id": "rt-freetown-bo",
                "passenger_phone": "+23276123456",
                "payment_code": "PC-1"
            }
        }
    })
}

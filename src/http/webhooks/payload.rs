//! Monime's webhook envelope, parsed only after the signature checked out, and turned into
//! domain types: a syntax error is 400, valid JSON of the wrong shape or with bad values 422.

use poda_jobs::ticket::{Currency, Money, TicketJob};
use serde::Deserialize;

pub const PAYMENT_COMPLETED: &str = "payment.completed";
const MAX_ID_LEN: usize = 128;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all (400).
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// JSON, but not a usable event (422).
    #[error("invalid event: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
struct Envelope {
    event: EventRef,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct EventRef {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentData {
    id: String,
    amount: Amount,
    financial_transaction_reference: Option<String>,
    metadata: Metadata,
}

#[derive(Debug, Deserialize)]
struct Amount {
    currency: String,
    value: serde_json::Number,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    company_id: Option<String>,
    route_id: Option<String>,
    passenger_phone: Option<String>,
    payment_code: Option<String>,
}

/// A verified webhook, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: String,
    pub name: String,
    /// Set for `payment.completed`: the ticket job to enqueue.
    pub ticket: Option<TicketJob>,
}

impl WebhookEvent {
    pub fn parse(body: &[u8]) -> Result<WebhookEvent, PayloadError> {
        let envelope: Envelope = serde_json::from_slice(body).map_err(classify)?;
        // The body is stored as jsonb, which refuses some escapes that JSON parsers accept
        // (and that a parser skipping a field never looks at): refuse them here, so one
        // delivery's bytes never fail the batch it would share with others.
        check_jsonb_escapes(body)?;
        let id = parse_id("event.id", &envelope.event.id)?;
        let name = envelope.event.name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_ID_LEN {
            return Err(PayloadError::Invalid("event.name is missing".into()));
        }
        let ticket = if name == PAYMENT_COMPLETED {
            let data: PaymentData = serde_json::from_value(envelope.data)
                .map_err(|e| PayloadError::Invalid(format!("data: {e}")))?;
            Some(ticket_from(&id, data)?)
        } else {
            None
        };
        Ok(WebhookEvent { id, name, ticket })
    }
}

fn classify(error: serde_json::Error) -> PayloadError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => PayloadError::Invalid(error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => PayloadError::Syntax(error.to_string()),
    }
}

fn ticket_from(event_id: &str, data: PaymentData) -> Result<TicketJob, PayloadError> {
    let payment_id = parse_id("data.id", &data.id)?;
    let currency = Currency::parse(&data.amount.currency).ok_or_else(|| {
        PayloadError::Invalid(format!(
            "data.amount.currency {:?} is not supported (SLE, USD)",
            data.amount.currency
        ))
    })?;
    let value_minor = data
        .amount
        .value
        .as_i64()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            PayloadError::Invalid(
                "data.amount.value must be a positive integer of minor units".into(),
            )
        })?;
    let m = data.metadata;
    let company_id = parse_id(
        "data.metadata.company_id",
        required("company_id", m.company_id)?.as_str(),
    )?;
    let route_id = parse_id(
        "data.metadata.route_id",
        required("route_id", m.route_id)?.as_str(),
    )?;
    let passenger_phone = parse_phone(&required("passenger_phone", m.passenger_phone)?)?;
    let payment_code = m
        .payment_code
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .map(|c| parse_id("data.metadata.payment_code", &c))
        .transpose()?;
    let financial_transaction_reference = data
        .financial_transaction_reference
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .map(|r| parse_id("data.financialTransactionReference", &r))
        .transpose()?;
    Ok(TicketJob {
        payment_id,
        event_id: event_id.to_owned(),
        amount: Money {
            currency,
            value_minor,
        },
        company_id,
        route_id,
        passenger_phone,
        payment_code,
        financial_transaction_reference,
    })
}

fn required(field: &str, value: Option<String>) -> Result<String, PayloadError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| PayloadError::Invalid(format!("data.metadata.{field} is required")))
}

/// An identifier: 1–128 characters of letters, digits and `-_.:`.
fn parse_id(field: &str, value: &str) -> Result<String, PayloadError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(PayloadError::Invalid(format!(
            "{field} must be 1-{MAX_ID_LEN} letters, digits or -_.:"
        )))
    }
}

/// E.164: `+` and 8 to 15 digits, the first not 0.
fn parse_phone(value: &str) -> Result<String, PayloadError> {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(PayloadError::Invalid(
            "data.metadata.passenger_phone must be an E.164 number like +23276123456".into(),
        ))
    }
}
/// Refuses the `\u` escapes Postgres' jsonb cannot store: NUL (`\u0000`) and UTF-16
/// Refuses the `\\u` escapes Postgres' jsonb cannot store: NUL (`\\u0000`) and UTF-16
/// surrogates that are not a high one followed by a low one. `body` is valid JSON, so every
/// backslash starts an escape inside a string. Hand-written: JSON parsers accept these (or
/// skip them unread in fields they ignore), and no crate checks for what jsonb refuses.
fn check_jsonb_escapes(body: &[u8]) -> Result<(), PayloadError> {
    let hex = |at: usize| -> Option<u32> {
        let digits = body.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let refuse = |what: &str| {
        Err(PayloadError::Syntax(format!(
            "body contains {what}, which cannot be stored"
        )))
    };
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            i += 1;
            continue;
        }
        if body.get(i + 1) != Some(&b'u') {
            i += 2; // a two-character escape such as \\ or \n
            continue;
        }
        let unit = hex(i + 2).unwrap_or(u32::MAX);
        match unit {
            0 => return refuse("a NUL character (\\u0000)"),
            0xD800..=0xDBFF => {
                let low = (body.get(i + 6..i + 8) == Some(br"\u".as_slice()))
                    .then(|| hex(i + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return refuse("an unpaired UTF-16 surrogate escape");
                }
                i += 12;
            }
            0xDC00..=0xDFFF => return refuse("an unpaired UTF-16 surrogate escape"),
            _ => i += 6,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payment(metadata: serde_json::Value, amount: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "caph.2025-08-23",
            "event": {"id": "evt-1", "name": "payment.completed", "timestamp": "2026-01-01T00:00:00Z"},
            "object": {"id": "pay-1", "type": "payment"},
            "data": {"id": "pay-1", "status": "completed", "amount": amount,
                     "financialTransactionReference": "txn-1", "metadata": metadata}
        }))
        .unwrap()
    }

    fn good_metadata() -> serde_json::Value {
        json!({"company_id": "co-1", "route_id": "rt-1", "passenger_phone": "+23276123456"})
    }

    #[test]
    fn escapes_jsonb_cannot_store_are_refused_wherever_they_are() {
        let refused = [
            r#"{"skipped": "\ud800", "event": {}}"#,
            r#"{"skipped": "\udc00"}"#,
            r#"{"skipped": "\ud800\u0041"}"#,
            r#"{"skipped": "a\u0000b"}"#,
            r#"{"skipped": "\ud800"#,
        ];
        for body in refused {
            assert!(
                matches!(
                    check_jsonb_escapes(body.as_bytes()),
                    Err(PayloadError::Syntax(_))
                ),
                "{body}"
            );
        }
        let stored = [
            r#"{"pair": "\ud83d\ude00", "nul_as_text": "\\u0000", "plain": "\u00e9\n\\"}"#,
            r#"{"k": "\\\\ud800"}"#,
        ];
        for body in stored {
            assert!(check_jsonb_escapes(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn a_lone_surrogate_in_a_skipped_field_is_a_bad_request() {
        let mut body = payload_with_extra(r#""\ud800""#);
        assert!(matches!(
            WebhookEvent::parse(&body),
            Err(PayloadError::Syntax(_))
        ));
        body = payload_with_extra(r#""fine""#);
        assert!(WebhookEvent::parse(&body).is_ok());
    }

    fn payload_with_extra(value: &str) -> Vec<u8> {
        let body = String::from_utf8(payment(
            good_metadata(),
            json!({"currency": "SLE", "value": 5}),
        ))
        .unwrap();
        body.replacen('{', &format!("{{\"extra\": {value}, "), 1)
            .into_bytes()
    }

    #[test]
    fn a_completed_payment_becomes_a_ticket_job() {
        let body = payment(good_metadata(), json!({"currency": "SLE", "value": 50000}));
        let event = WebhookEvent::parse(&body).unwrap();
        let ticket = event.ticket.unwrap();
        assert_eq!(ticket.payment_id, "pay-1");
        assert_eq!(ticket.amount.value_minor, 50_000);
        assert_eq!(ticket.amount.currency, Currency::Sle);
        assert_eq!(ticket.payment_code, None);
    }

    #[test]
    fn bad_values_are_invalid_and_bad_syntax_is_syntax() {
        let cases = [
            payment(good_metadata(), json!({"currency": "EUR", "value": 5})),
            payment(good_metadata(), json!({"currency": "SLE", "value": 0})),
            payment(good_metadata(), json!({"currency": "SLE", "value": 1.5})),
            payment(good_metadata(), json!({"currency": "SLE", "value": "5"})),
            payment(
                json!({"company_id": "co-1", "route_id": "rt-1"}),
                json!({"currency": "SLE", "value": 5}),
            ),
            payment(
                json!({"company_id": "co 1", "route_id": "rt-1", "passenger_phone": "+23276123456"}),
                json!({"currency": "SLE", "value": 5}),
            ),
            payment(
                json!({"company_id": "co-1", "route_id": "rt-1", "passenger_phone": "076123456"}),
                json!({"currency": "SLE", "value": 5}),
            ),
            br#"{"event": {"id": "evt-1"}}"#.to_vec(),
        ];
        for body in cases {
            assert!(
                matches!(WebhookEvent::parse(&body), Err(PayloadError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(matches!(
            WebhookEvent::parse(b"{\"event\":"),
            Err(PayloadError::Syntax(_))
        ));
        assert!(matches!(
            WebhookEvent::parse(b"not json"),
            Err(PayloadError::Syntax(_))
        ));
    }

    #[test]
    fn other_events_carry_no_ticket() {
        let body = br#"{"event": {"id": "evt-9", "name": "payment.failed"}, "data": {}}"#;
        let event = WebhookEvent::parse(body).unwrap();
        assert_eq!(event.ticket, None);
        assert_eq!(event.name, "payment.failed");
    }
}

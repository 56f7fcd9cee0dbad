//! A stand-in for a third-party payment SDK: no OpenTelemetry inside, so the caller wraps it in
//! a manual span (see `checkout::charge`).

use std::time::Duration;

/// The provider's API host, as the SDK would talk to it.
pub(crate) const HOST: &str = "api.acme-pay.example";

#[derive(Debug, thiserror::Error)]
pub(crate) enum PaymentError {
    #[error("card declined by the issuer")]
    Declined,
}

/// Charges `amount_cents`; takes 20–40 ms like a remote call; `declined` makes it fail.
pub(crate) async fn charge(user: &str, amount_cents: i64, declined: bool) -> Result<String, PaymentError> {
    tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 20)).await;
    if declined {
        return Err(PaymentError::Declined);
    }
    Ok(format!("rcpt-{user}-{amount_cents}-{:08x}", rand::random::<u32>()))
}

//! A ClickHouse client over its HTTP interface: one statement per request, rows in
//! `RowBinary`, credentials by HTTP basic authentication (never in the URL or in SQL).

use std::time::Duration;

use reqwest::Url;

/// Why a statement failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChError {
    /// No answer: connection refused, reset, timed out.
    #[error("cannot reach ClickHouse at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// ClickHouse answered with an error.
    #[error("ClickHouse at {url} refused: {message}")]
    Server { url: String, code: Option<u32>, message: String },
}

impl ChError {
    /// ClickHouse's error code, when it sent one.
    pub fn code(&self) -> Option<u32> {
        match self {
            ChError::Server { code, .. } => *code,
            ChError::Unreachable { .. } => None,
        }
    }

    /// Wrong user or password (codes 192, 193, 516 across versions).
    pub fn is_auth(&self) -> bool {
        matches!(self.code(), Some(192 | 193 | 194 | 516))
    }
}

/// Connection settings for one ClickHouse server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    url: Url,
    user: Option<String>,
    password: Option<String>,
}

impl Client {
    pub fn new(url: &str, user: Option<String>, password: Option<String>) -> Result<Client, String> {
        let url: Url = url.parse().map_err(|e| format!("--clickhouse-url {url:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "--clickhouse-url {url} must use http:// (ClickHouse's HTTP interface; put TLS in front with a proxy)"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client { http, url, user, password })
    }

    /// The same credentials at another host and port (a shard of the cluster).
    pub fn at(&self, host: &str, port: u16) -> Client {
        let mut url = self.url.clone();
        let _ = url.set_host(Some(host));
        let _ = url.set_port(Some(port));
        Client { url, ..self.clone() }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(8123)
    }

    /// Runs `sql` (sent as the request body) and returns the answer's bytes.
    pub async fn query(&self, sql: &str, settings: &[(&str, &str)]) -> Result<Vec<u8>, ChError> {
        self.send(None, sql.as_bytes().to_vec(), settings).await
    }

    /// Runs `INSERT … FORMAT RowBinary` with `rows` as the data.
    pub async fn insert(&self, sql: &str, rows: Vec<u8>, settings: &[(&str, &str)]) -> Result<(), ChError> {
        self.send(Some(sql), rows, settings).await.map(|_| ())
    }

    async fn send(
        &self,
        query: Option<&str>,
        body: Vec<u8>,
        settings: &[(&str, &str)],
    ) -> Result<Vec<u8>, ChError> {
        let mut url = self.url.clone();
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(q) = query {
                pairs.append_pair("query", q);
            }
            for (k, v) in settings {
                pairs.append_pair(k, v);
            }
        }
        let mut req = self.http.post(url).body(body);
        if let Some(user) = &self.user {
            req = req.basic_auth(user, self.password.as_deref());
        }
        let shown = || self.url.to_string();
        let resp =
            req.send().await.map_err(|e| ChError::Unreachable { url: shown(), message: error_chain(&e) })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ChError::Unreachable { url: shown(), message: error_chain(&e) })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        Err(ChError::Server { url: shown(), code: error_code(&text), message: text })
    }
}

/// The `Code: N` ClickHouse puts at the start of its error texts.
fn error_code(text: &str) -> Option<u32> {
    let rest = text.strip_prefix("Code: ")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_clickhouse_texts() {
        assert_eq!(error_code("Code: 516. DB::Exception: default: Authentication failed"), Some(516));
        assert_eq!(error_code("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"), Some(60));
        assert_eq!(error_code("Bad request"), None);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Client::new("http://127.0.0.1:8123", None, None).is_ok());
        assert!(Client::new("https://x:8443", None, None).unwrap_err().contains("http://"));
        assert!(Client::new("not a url", None, None).is_err());
    }
}

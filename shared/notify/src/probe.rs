//! [`HttpProber`]: the endpoint checks' HTTP calls to a deployed app, under the same
//! outbound policy as callbacks ([`crate::pinned_client`]): no redirects followed, and in
//! the cloud only public addresses, checked at call time and pinned.

use std::time::Duration;

use async_trait::async_trait;
use tb_core::checks::{ProbeReply, ProbeRequest, Prober};
use tb_core::ports::PortError;

/// The most of an answer's body that is read.
const MAX_BODY: usize = 64 << 10;

#[derive(Debug)]
pub struct HttpProber {
    allow_private: bool,
}

impl HttpProber {
    /// `allow_private`: the local binary, whose apps run on loopback.
    pub fn new(allow_private: bool) -> Self {
        HttpProber { allow_private }
    }
}

#[async_trait]
impl Prober for HttpProber {
    async fn send(
        &self,
        base: &str,
        request: &ProbeRequest,
        timeout: Duration,
    ) -> Result<ProbeReply, PortError> {
        let url = format!("{}{}", base.trim_end_matches('/'), request.path);
        let client = crate::pinned_client(&url, self.allow_private, timeout).await?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| PortError::Permanent(format!("bad method: {e}")))?;
        let mut req = client.request(method, &url);
        if let Some(body) = &request.body {
            req = req.json(body);
        }
        let mut answer = req
            .send()
            .await
            .map_err(|e| PortError::Transient(e.without_url().to_string()))?;
        let status = answer.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| PortError::Transient(e.without_url().to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_BODY {
                body.truncate(MAX_BODY);
                break;
            }
        }
        Ok(ProbeReply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_apps_are_refused_unless_allowed() {
        let request = ProbeRequest {
            method: "GET".into(),
            path: "/api/health".into(),
            body: None,
        };
        let err = HttpProber::new(false)
            .send("http://127.0.0.1:9", &request, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("public address"), "{err}");
    }
}

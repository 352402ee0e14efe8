//! Azure Scheduled Events, the IMDS endpoint that tells a VM it is about to be deleted (scale-in),
//! evicted (Spot) or rebooted, so that `watch` can unregister the agent before it goes.
//!
//! `GET /metadata/scheduledevents?api-version=2020-07-01` with `Metadata: true` returns a document
//! of events; `POST` with `{"StartRequests":[{"EventId": …}]}` tells the platform it may proceed
//! before `NotBefore`. The VM's own name (`compute/name`) is what `Resources` lists. Like every IMDS
//! call this never goes through a proxy ([`Service::Imds`]). The base URL is the one the identity's
//! IMDS client uses ([`crate::identity::imds::IMDS_BASE_ENV`]).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::env::Env;
use crate::identity::imds::{DEFAULT_IMDS_BASE, IMDS_BASE_ENV};
use crate::net::{Net, Service};

pub const API_VERSION: &str = "2020-07-01";
/// One IMDS request: it answers within milliseconds when it is there.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{name} is not a valid URL: '{value}'")]
    BadBase { name: &'static str, value: String },
    #[error("IMDS did not answer at {url}: {detail}")]
    Unavailable { url: String, detail: String },
    #[error("IMDS answered {status} at {url}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("IMDS sent a scheduled events document that is not valid at {url}: {detail}")]
    Parse { url: String, detail: String },
}

/// The scheduled events document.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    #[serde(rename = "DocumentIncarnation", default)]
    pub incarnation: u64,
    #[serde(rename = "Events", default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    pub event_id: String,
    /// `Freeze`, `Reboot`, `Redeploy`, `Preempt`, `Terminate`.
    pub event_type: String,
    #[serde(default)]
    pub resource_type: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub event_status: String,
    /// An HTTP date (`Mon, 19 Sep 2016 18:29:47 GMT`); empty once the event has started.
    #[serde(default)]
    pub not_before: String,
}

impl Event {
    /// The VM goes away for good: scale-in or deletion (`Terminate`), Spot eviction (`Preempt`).
    pub fn is_departure(&self) -> bool {
        matches!(self.event_type.as_str(), "Terminate" | "Preempt")
    }

    /// Whether `Resources` names this VM.
    pub fn concerns(&self, vm_name: &str) -> bool {
        self.resources
            .iter()
            .any(|r| r.eq_ignore_ascii_case(vm_name))
    }

    /// `NotBefore` in Unix seconds; `None` when it is empty or not a date.
    pub fn not_before_unix(&self) -> Option<u64> {
        let t = httpdate::parse_http_date(self.not_before.trim()).ok()?;
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

pub struct EventsClient {
    base: Url,
    net: Net,
}

impl EventsClient {
    pub fn from_env(env: &Env, net: &Net) -> Result<Self, EventsError> {
        let raw = env.var(IMDS_BASE_ENV).unwrap_or(DEFAULT_IMDS_BASE);
        let base = Url::parse(raw).map_err(|_| EventsError::BadBase {
            name: IMDS_BASE_ENV,
            value: raw.to_owned(),
        })?;
        Ok(Self {
            base,
            net: net.clone(),
        })
    }

    fn url(&self, path: &str, query: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(Some(query));
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<String, EventsError> {
        let request = request.header("Metadata", "true").timeout(REQUEST_TIMEOUT);
        let answer = self
            .net
            .fetch(request)
            .await
            .map_err(|f| EventsError::Unavailable {
                url: url.to_string(),
                detail: f.to_string(),
            })?;
        if !(200..300).contains(&answer.status) {
            return Err(EventsError::Status {
                url: url.to_string(),
                status: answer.status,
                body: answer.body.chars().take(200).collect(),
            });
        }
        Ok(answer.body)
    }

    /// This VM's name, as `Resources` lists it.
    pub async fn vm_name(&self) -> Result<String, EventsError> {
        let url = self.url(
            "/metadata/instance/compute/name",
            "api-version=2021-02-01&format=text",
        );
        let body = self
            .send(self.net.client(Service::Imds).get(url.clone()), &url)
            .await?;
        let name = body.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(EventsError::Parse {
                url: url.to_string(),
                detail: "no usable VM name".into(),
            });
        }
        Ok(name.to_owned())
    }

    pub async fn document(&self) -> Result<Document, EventsError> {
        let url = self.url(
            "/metadata/scheduledevents",
            &format!("api-version={API_VERSION}"),
        );
        let body = self
            .send(self.net.client(Service::Imds).get(url.clone()), &url)
            .await?;
        serde_json::from_str(&body).map_err(|e| EventsError::Parse {
            url: url.to_string(),
            detail: e.to_string(),
        })
    }

    /// Lets the platform start the event now.
    pub async fn approve(&self, event_id: &str) -> Result<(), EventsError> {
        let url = self.url(
            "/metadata/scheduledevents",
            &format!("api-version={API_VERSION}"),
        );
        let body = serde_json::json!({"StartRequests": [{"EventId": event_id}]});
        self.send(
            self.net
                .client(Service::Imds)
                .post(url.clone())
                .header("Content-Type", "application/json")
                .body(body.to_string()),
            &url,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let doc: Document = serde_json::from_str(
            r#"{"DocumentIncarnation":3,"Events":[{"EventId":"602d9444-d2cd-49c7-8624-8643e7171297",
            "EventType":"Terminate","ResourceType":"VirtualMachine","Resources":["vmss_vm1"],
            "EventStatus":"Scheduled","NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT",
            "Description":"","EventSource":"Platform","DurationInSeconds":-1}]}"#,
        )
        .unwrap();
        assert_eq!(doc.incarnation, 3);
        let e = &doc.events[0];
        assert!(e.is_departure());
        assert!(e.concerns("VMSS_VM1"));
        assert!(!e.concerns("vmss_vm2"));
        assert_eq!(e.not_before_unix(), Some(1_474_309_787));
        let reboot = Event {
            event_type: "Reboot".into(),
            ..e.clone()
        };
        assert!(!reboot.is_departure());
        let started = Event {
            not_before: String::new(),
            ..e.clone()
        };
        assert_eq!(started.not_before_unix(), None);
        let empty: Document =
            serde_json::from_str(r#"{"DocumentIncarnation":0,"Events":[]}"#).unwrap();
        assert!(empty.events.is_empty());
    }
}

//! `/health` and `/health/fleet` bodies (contract §2.3).
//!
//! Field order and names are part of the contract: HAProxy matches the raw body with
//! `"fleet_available":([1-9]|1[0-6])[,}]`, so these are serialised with `serde_json::to_string`
//! (compact, no space after `:`) and the struct field order is the documented order.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHealth {
    pub status: String,
    pub worker_calls: u64,
    pub worker_max: u64,
    pub total_capacity: u64,
    pub total_available: u64,
    pub workers: u64,
    pub worker_id: String,
    pub worker_pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHealth {
    pub status: String,
    pub fleet_calls: u64,
    pub fleet_max: u64,
    pub fleet_available: u64,
    pub workers: Vec<FleetWorker>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FleetWorker {
    Up { id: String, calls: u64, max: u64, pid: u32 },
    Unreachable { id: String, status: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_compact_and_in_documented_order() {
        let h = WorkerHealth {
            status: "ok".into(),
            worker_calls: 0,
            worker_max: 1,
            total_capacity: 16,
            total_available: 16,
            workers: 16,
            worker_id: "3".into(),
            worker_pid: 12345,
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"status":"ok","worker_calls":0,"worker_max":1,"total_capacity":16,"total_available":16,"workers":16,"worker_id":"3","worker_pid":12345}"#
        );
    }

    #[test]
    fn fleet_body_matches_the_haproxy_pattern_shape() {
        let f = FleetHealth {
            status: "ok".into(),
            fleet_calls: 3,
            fleet_max: 16,
            fleet_available: 13,
            workers: vec![
                FleetWorker::Up { id: "1".into(), calls: 1, max: 1, pid: 12345 },
                FleetWorker::Unreachable { id: "2".into(), status: "unreachable".into() },
            ],
        };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(
            s,
            r#"{"status":"ok","fleet_calls":3,"fleet_max":16,"fleet_available":13,"workers":[{"id":"1","calls":1,"max":1,"pid":12345},{"id":"2","status":"unreachable"}]}"#
        );
    }
}

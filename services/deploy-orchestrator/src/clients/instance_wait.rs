//! The rules of the instance watcher (deploy step 6, and waking a target), without I/O: fed the
//! agents' reports and the time, it says whether to keep waiting, that every region runs
//! its replicas, or why the deploy fails.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use slipway_core::krane::{InstanceStatus, InstancesReport};

use crate::clients::instances::ReadyInstance;

/// Reports in which one instance is `failed` before the deploy gives up on it (an app that
/// exits is restarted and fails again; three times is a crash loop, not bad luck).
pub(crate) const FAILED_REPORTS: u32 = 3;

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Wait,
    Ready(Vec<ReadyInstance>),
    Failed(String),
}

#[derive(Default)]
struct Region {
    wanted: u32,
    report: Option<InstancesReport>,
}

pub(crate) struct InstanceWait {
    regions: BTreeMap<String, Region>,
    failed_reports: HashMap<String, u32>,
    failed_since: HashMap<String, i64>,
    deadline_ms: i64,
    ready_timeout: Duration,
    failed_grace: Duration,
}

impl InstanceWait {
    /// Waiting for `replicas` (region → count) until `deadline_ms` (the ready timeout after
    /// the wait began); an instance may stay `failed` for `failed_grace`.
    pub fn new(
        replicas: &BTreeMap<String, u32>,
        deadline_ms: i64,
        ready_timeout: Duration,
        failed_grace: Duration,
    ) -> Self {
        let regions = replicas
            .iter()
            .map(|(r, n)| {
                let region = Region {
                    wanted: *n,
                    report: None,
                };
                (r.clone(), region)
            })
            .collect();
        Self {
            regions,
            failed_reports: HashMap::new(),
            failed_since: HashMap::new(),
            deadline_ms,
            ready_timeout,
            failed_grace,
        }
    }

    /// The regions waited for.
    pub fn regions(&self) -> impl Iterator<Item = &String> {
        self.regions.keys()
    }

    /// The report a region has now, read before the wait (not counted as a new failure).
    pub fn seed(&mut self, region: &str, report: InstancesReport) {
        if let Some(slot) = self.regions.get_mut(region) {
            slot.report = Some(report);
        }
    }

    /// A new report of `region`, received at `now_ms`.
    pub fn report(&mut self, region: &str, report: InstancesReport, now_ms: i64) {
        let Some(slot) = self.regions.get_mut(region) else {
            return;
        };
        for i in &report.instances {
            if i.status == InstanceStatus::Failed {
                *self.failed_reports.entry(i.id.clone()).or_default() += 1;
                self.failed_since.entry(i.id.clone()).or_insert(now_ms);
            } else {
                self.failed_since.remove(&i.id);
            }
        }
        slot.report = Some(report);
    }

    pub fn verdict(&self, now_ms: i64) -> Verdict {
        if self.regions.values().all(Region::ready) {
            return Verdict::Ready(self.ready_instances());
        }
        let grace_ms = i64::try_from(self.failed_grace.as_millis()).unwrap_or(i64::MAX);
        if now_ms >= self.deadline_ms {
            return Verdict::Failed(format!(
                "instances did not become healthy within the ready timeout ({}): {}",
                humanize(self.ready_timeout),
                self.summary()
            ));
        }
        if let Some((id, _)) = self
            .failed_since
            .iter()
            .find(|(_, since)| now_ms - **since >= grace_ms)
        {
            return Verdict::Failed(format!(
                "instance {id} stayed failed for {}: {}",
                humanize(self.failed_grace),
                self.summary()
            ));
        }
        if let Some((id, n)) = self
            .failed_reports
            .iter()
            .find(|(_, n)| **n >= FAILED_REPORTS)
        {
            return Verdict::Failed(format!(
                "instance {id} failed {n} times: {}",
                self.summary()
            ));
        }
        Verdict::Wait
    }

    fn ready_instances(&self) -> Vec<ReadyInstance> {
        self.regions
            .iter()
            .flat_map(|(region, r)| {
                r.report.iter().flat_map(move |report| {
                    report.instances.iter().map(move |i| ReadyInstance {
                        id: i.id.clone(),
                        region: region.clone(),
                        address: i.address.clone(),
                    })
                })
            })
            .collect()
    }

    fn summary(&self) -> String {
        self.regions
            .iter()
            .map(|(name, r)| r.describe(name))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Region {
    fn ready(&self) -> bool {
        self.report.as_ref().is_some_and(|r| {
            r.instances.len() >= self.wanted as usize
                && r.instances
                    .iter()
                    .all(|i| i.status == InstanceStatus::Running)
        })
    }

    fn describe(&self, region: &str) -> String {
        let Some(report) = &self.report else {
            return format!("region {region}: no report from its agent");
        };
        let running = report
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .count();
        let others: Vec<String> = report
            .instances
            .iter()
            .filter(|i| i.status != InstanceStatus::Running)
            .map(|i| match &i.message {
                Some(m) => format!("{} {} ({m})", i.id, i.status),
                None if i.status == InstanceStatus::Pending => {
                    format!("{} {} (not healthy yet)", i.id, i.status)
                }
                None => format!("{} {}", i.id, i.status),
            })
            .collect();
        format!(
            "region {region}: {running} of {} running{}{}",
            self.wanted,
            if others.is_empty() { "" } else { "; " },
            others.join(", ")
        )
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use slipway_core::krane::ReportedInstance;

    use super::*;

    const SECOND: i64 = 1000;

    fn report(statuses: &[(&str, InstanceStatus)]) -> InstancesReport {
        InstancesReport {
            instances: statuses
                .iter()
                .map(|(id, status)| ReportedInstance {
                    id: id.to_string(),
                    address: format!("127.0.0.1:{}", 9000 + id.len()),
                    status: *status,
                    message: None,
                })
                .collect(),
            reported_at_ms: 0,
        }
    }

    /// Two regions (eu ×2, us ×1), ready timeout 60 s from t=0, failed grace 10 s.
    fn wait() -> InstanceWait {
        let replicas = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 1)]);
        InstanceWait::new(
            &replicas,
            60 * SECOND,
            Duration::from_secs(60),
            Duration::from_secs(10),
        )
    }

    use InstanceStatus::{Failed, Pending, Running};

    #[test]
    fn ready_once_every_region_runs_its_replicas() {
        let mut w = wait();
        w.report("eu", report(&[("a", Running), ("b", Running)]), SECOND);
        assert_eq!(w.verdict(SECOND), Verdict::Wait, "us has not reported");
        w.report("us", report(&[("c", Pending)]), 2 * SECOND);
        assert_eq!(w.verdict(2 * SECOND), Verdict::Wait);
        w.report("us", report(&[("c", Running)]), 3 * SECOND);
        let Verdict::Ready(ready) = w.verdict(3 * SECOND) else {
            panic!("not ready")
        };
        assert_eq!(ready.len(), 3);
        // Reports of regions not waited for change nothing.
        w.report("mars", report(&[("x", Failed)]), 4 * SECOND);
        assert!(matches!(w.verdict(4 * SECOND), Verdict::Ready(_)));
    }

    #[test]
    fn the_deadline_is_judged_on_the_reports_at_hand() {
        let mut w = wait();
        // Seeded reports (read before the wait) count even when the deadline has passed.
        w.seed("eu", report(&[("a", Running), ("b", Running)]));
        w.seed("us", report(&[("c", Running)]));
        assert!(matches!(w.verdict(120 * SECOND), Verdict::Ready(_)));

        let mut w = wait();
        w.seed("eu", report(&[("a", Running), ("b", Pending)]));
        let Verdict::Failed(reason) = w.verdict(60 * SECOND) else {
            panic!("did not fail at the deadline")
        };
        assert!(reason.contains("within the ready timeout (1m)"), "{reason}");
        assert!(
            reason.contains("region eu: 1 of 2 running; b pending (not healthy yet)"),
            "{reason}"
        );
        assert!(
            reason.contains("region us: no report from its agent"),
            "{reason}"
        );
    }

    #[test]
    fn a_crash_loop_fails_at_the_third_failed_report() {
        let mut w = wait();
        for (n, t) in [(1, 1), (2, 2)] {
            w.report("us", report(&[("c", Failed)]), t * SECOND);
            assert_eq!(
                w.verdict(t * SECOND),
                Verdict::Wait,
                "after {n} failed reports"
            );
            w.report("us", report(&[("c", Pending)]), t * SECOND + 500);
        }
        w.report("us", report(&[("c", Failed)]), 3 * SECOND);
        let Verdict::Failed(reason) = w.verdict(3 * SECOND) else {
            panic!("a crash loop was not noticed")
        };
        assert!(reason.starts_with("instance c failed 3 times"), "{reason}");
    }

    #[test]
    fn an_instance_failed_past_the_grace_fails_and_a_recovery_resets_it() {
        let mut w = wait();
        w.report("us", report(&[("c", Failed)]), SECOND);
        assert_eq!(w.verdict(10 * SECOND), Verdict::Wait, "within the grace");
        w.report("us", report(&[("c", Pending)]), 10 * SECOND);
        assert_eq!(
            w.verdict(20 * SECOND),
            Verdict::Wait,
            "recovered: the grace restarts"
        );
        w.report("us", report(&[("c", Failed)]), 21 * SECOND);
        let Verdict::Failed(reason) = w.verdict(31 * SECOND) else {
            panic!("stayed failed past the grace")
        };
        assert!(
            reason.starts_with("instance c stayed failed for 10s"),
            "{reason}"
        );
    }
}

//! The rules of the instance watcher (deploy step 6, and waking a target), without I/O: fed the
//! agents' reports, and reading an injected clock, it says whether to keep waiting, that every
//! region runs its replicas, or why the deploy fails.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use slipway_core::{
    krane::{InstanceStatus, InstancesReport},
    time::SharedClock,
};

/// An instance as the deployment records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInstance {
    pub id: String,
    pub region: String,
    pub address: String,
    /// The KV revision of its region's report (0 in journals written before it was kept).
    #[serde(default)]
    pub revision: u64,
}

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
    /// The desired document version reports must be about (older ones are stale: instances
    /// being stopped may still be listed running in them).
    min_version: i64,
    report: Option<InstancesReport>,
    /// The KV revision of `report`.
    revision: u64,
}

impl Region {
    /// Whether `report` is about the desired document waited for (agents that do not say
    /// which are taken at their word).
    fn current(&self, report: &InstancesReport) -> bool {
        report.version == 0 || report.version >= self.min_version
    }
}

pub(crate) struct InstanceWait {
    regions: BTreeMap<String, Region>,
    failed_reports: HashMap<String, u32>,
    failed_since: HashMap<String, i64>,
    deadline_ms: i64,
    timing: ReadyTiming,
    clock: SharedClock,
}

/// How long instances get to become healthy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadyTiming {
    /// From the start of a wait to its deadline.
    pub ready_timeout: Duration,
    /// How long one instance may stay `failed`.
    pub failed_grace: Duration,
}

impl InstanceWait {
    /// Waiting for `replicas` (region → count), reported for at least the desired document
    /// `versions` (region → version; absent: any), until `deadline_ms` (the ready timeout after
    /// the wait began), by `clock`.
    pub fn new(
        replicas: &BTreeMap<String, u32>,
        versions: &BTreeMap<String, i64>,
        deadline_ms: i64,
        timing: ReadyTiming,
        clock: SharedClock,
    ) -> Self {
        let regions = replicas
            .iter()
            .map(|(r, n)| {
                let region = Region {
                    wanted: *n,
                    min_version: versions.get(r).copied().unwrap_or(0),
                    ..Region::default()
                };
                (r.clone(), region)
            })
            .collect();
        Self {
            regions,
            failed_reports: HashMap::new(),
            failed_since: HashMap::new(),
            deadline_ms,
            timing,
            clock,
        }
    }

    /// The regions waited for.
    pub fn regions(&self) -> impl Iterator<Item = &String> {
        self.regions.keys()
    }

    /// The report a region has now (KV revision `revision`), read before the wait (not
    /// counted as a new failure).
    pub fn seed(&mut self, region: &str, report: InstancesReport, revision: u64) {
        if let Some(slot) = self.regions.get_mut(region).filter(|s| s.current(&report)) {
            slot.report = Some(report);
            slot.revision = revision;
        }
    }

    /// A new report of `region` (KV revision `revision`), received now.
    pub fn report(&mut self, region: &str, report: InstancesReport, revision: u64) {
        let now_ms = self.clock.now_ms();
        let Some(slot) = self.regions.get_mut(region).filter(|s| s.current(&report)) else {
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
        slot.revision = revision;
    }

    /// What to do now; until when waiting makes sense (the deadline).
    pub fn verdict(&self) -> Verdict {
        let now_ms = self.clock.now_ms();
        if self.regions.values().all(Region::ready) {
            return Verdict::Ready(self.ready_instances());
        }
        // An image the agent cannot run fails at once: waiting will not help.
        let unrunnable = self.regions.iter().find_map(|(region, r)| {
            let report = r.report.as_ref()?;
            let i = report
                .instances
                .iter()
                .find(|i| i.status == InstanceStatus::Failed && i.unrunnable)?;
            Some((region, i.message.clone().unwrap_or_default()))
        });
        if let Some((region, message)) = unrunnable {
            return Verdict::Failed(format!(
                "the agent of region {region} cannot run the image: {message}"
            ));
        }
        let grace_ms = i64::try_from(self.timing.failed_grace.as_millis()).unwrap_or(i64::MAX);
        if now_ms >= self.deadline_ms {
            return Verdict::Failed(format!(
                "instances did not become healthy within the ready timeout ({}): {}",
                humanize(self.timing.ready_timeout),
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
                humanize(self.timing.failed_grace),
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
                        revision: r.revision,
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

pub(crate) fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use slipway_core::{krane::ReportedInstance, time::ManualClock};

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
                    restarts: 0,
                    crash_looping: false,
                    unrunnable: false,
                })
                .collect(),
            reported_at_ms: 0,
            version: 0,
            epoch: 0,
        }
    }

    /// Two regions (eu ×2, us ×1), ready timeout 60 s from t=0, failed grace 10 s; the
    /// clock, at t=0.
    fn wait() -> (InstanceWait, Arc<ManualClock>) {
        let replicas = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 1)]);
        let clock = ManualClock::at(0);
        let timing = ReadyTiming {
            ready_timeout: Duration::from_secs(60),
            failed_grace: Duration::from_secs(10),
        };
        let versions = BTreeMap::from([("eu".to_string(), 5)]);
        let wait = InstanceWait::new(&replicas, &versions, 60 * SECOND, timing, clock.clone());
        (wait, clock)
    }

    use InstanceStatus::{Failed, Pending, Running};

    #[test]
    fn ready_once_every_region_runs_its_replicas() {
        let (mut w, clock) = wait();
        clock.set(SECOND);
        w.report("eu", report(&[("a", Running), ("b", Running)]), 1);
        assert_eq!(w.verdict(), Verdict::Wait, "us has not reported");
        clock.set(2 * SECOND);
        w.report("us", report(&[("c", Pending)]), 1);
        assert_eq!(w.verdict(), Verdict::Wait);
        clock.set(3 * SECOND);
        w.report("us", report(&[("c", Running)]), 1);
        let Verdict::Ready(ready) = w.verdict() else {
            panic!("not ready")
        };
        assert_eq!(ready.len(), 3);
        // Reports of regions not waited for change nothing.
        clock.set(4 * SECOND);
        w.report("mars", report(&[("x", Failed)]), 1);
        assert!(matches!(w.verdict(), Verdict::Ready(_)));
    }

    #[test]
    fn reports_about_an_older_desired_document_are_not_waited_on() {
        let (mut w, _clock) = wait();
        let at = |version, statuses: &[(&str, InstanceStatus)]| InstancesReport {
            version,
            ..report(statuses)
        };
        w.report("us", report(&[("c", Running)]), 1);
        // eu waits for version 5: instances still listed running while being stopped for an
        // older document do not count, nor do their failures.
        w.seed("eu", at(4, &[("a", Running), ("b", Running)]), 2);
        w.report("eu", at(4, &[("a", Failed), ("b", Failed)]), 3);
        assert_eq!(w.verdict(), Verdict::Wait);
        w.report("eu", at(5, &[("a2", Running), ("b2", Running)]), 4);
        let Verdict::Ready(ready) = w.verdict() else {
            panic!("not ready")
        };
        assert!(ready.iter().any(|i| i.id == "a2"), "{ready:?}");
    }

    #[test]
    fn the_deadline_is_judged_on_the_reports_at_hand() {
        let (mut w, clock) = wait();
        // Seeded reports (read before the wait) count even when the deadline has passed.
        w.seed("eu", report(&[("a", Running), ("b", Running)]), 1);
        w.seed("us", report(&[("c", Running)]), 1);
        clock.set(120 * SECOND);
        assert!(matches!(w.verdict(), Verdict::Ready(_)));

        let (mut w, clock) = wait();
        w.seed("eu", report(&[("a", Running), ("b", Pending)]), 1);
        clock.set(60 * SECOND - 1);
        assert_eq!(
            w.verdict(),
            Verdict::Wait,
            "a millisecond before the deadline"
        );
        clock.advance(Duration::from_millis(1));
        let Verdict::Failed(reason) = w.verdict() else {
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
        let (mut w, clock) = wait();
        for n in 1..=2 {
            clock.set(n * SECOND);
            w.report("us", report(&[("c", Failed)]), 1);
            assert_eq!(w.verdict(), Verdict::Wait, "after {n} failed reports");
            clock.advance(Duration::from_millis(500));
            w.report("us", report(&[("c", Pending)]), 1);
        }
        clock.set(3 * SECOND);
        w.report("us", report(&[("c", Failed)]), 1);
        let Verdict::Failed(reason) = w.verdict() else {
            panic!("a crash loop was not noticed")
        };
        assert!(reason.starts_with("instance c failed 3 times"), "{reason}");
    }

    #[test]
    fn an_image_the_agent_cannot_run_fails_at_once() {
        let (mut w, clock) = wait();
        clock.set(SECOND);
        let mut unrunnable = report(&[("c", Failed)]);
        unrunnable.instances[0].unrunnable = true;
        unrunnable.instances[0].message = Some("runs only exec: images".into());
        w.report("us", unrunnable, 1);
        let Verdict::Failed(reason) = w.verdict() else {
            panic!("an unrunnable image was waited for")
        };
        assert_eq!(
            reason,
            "the agent of region us cannot run the image: runs only exec: images"
        );
    }

    #[test]
    fn an_instance_failed_past_the_grace_fails_and_a_recovery_resets_it() {
        let (mut w, clock) = wait();
        clock.set(SECOND);
        w.report("us", report(&[("c", Failed)]), 1);
        clock.set(SECOND + 10 * SECOND - 1);
        assert_eq!(w.verdict(), Verdict::Wait, "within the grace");
        w.report("us", report(&[("c", Pending)]), 1);
        clock.set(20 * SECOND);
        assert_eq!(w.verdict(), Verdict::Wait, "recovered: the grace restarts");
        clock.set(21 * SECOND);
        w.report("us", report(&[("c", Failed)]), 1);
        clock.set(31 * SECOND);
        let Verdict::Failed(reason) = w.verdict() else {
            panic!("stayed failed past the grace")
        };
        assert!(
            reason.starts_with("instance c stayed failed for 10s"),
            "{reason}"
        );
    }
}

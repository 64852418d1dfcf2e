//! The crate's jobs, by name: the registry every face (command line, HTTP, schedule,
//! run history, metrics) takes job names from, and the run history they share.
//!
//! A job is a module of its own (`telemetry_daily`, `telemetry_purge`) with a `run`
//! function and a report that implements [`JobReport`](crate::model::JobReport); it
//! gets its name here.

mod history;

pub(crate) use self::history::History;

use crate::model::{JOB_NAME, PURGE_JOB_NAME};

/// A job of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Raw events rolled up by day and hour.
    TelemetryDaily,
    /// Raw events deleted once their rollups hold them.
    TelemetryPurge,
}

impl Job {
    /// Every job, in the order listings give them.
    pub const ALL: [Job; 2] = [Job::TelemetryDaily, Job::TelemetryPurge];

    /// The job's name, as `job_runs.job`, `/api/jobs/{job}` and reports give it.
    pub fn name(&self) -> &'static str {
        match self {
            Job::TelemetryDaily => JOB_NAME,
            Job::TelemetryPurge => PURGE_JOB_NAME,
        }
    }

    /// The job named `name`, if there is one.
    pub fn named(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|job| job.name() == name)
    }

    /// Every job's name, for messages: `telemetry-daily, telemetry-purge`.
    pub fn names() -> String {
        Job::ALL.map(|job| job.name()).join(", ")
    }
}

impl std::str::FromStr for Job {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Job::named(name).ok_or_else(|| format!("'{name}' is not a job: {}", Job::names()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_is_found_by_its_name_and_no_other_name_is_a_job() {
        for job in Job::ALL {
            assert_eq!(job.name().parse::<Job>(), Ok(job));
        }
        assert_eq!(
            "telemetry-weekly".parse::<Job>(),
            Err("'telemetry-weekly' is not a job: telemetry-daily, telemetry-purge".to_owned())
        );
    }
}

//! The durable workflows: deploy, rollback, promote, wake, archive and the idle-preview scale-down, with the
//! pieces they share (the project lease, waking a target, settling what they superseded).

pub(crate) mod archive;
pub(crate) mod deploy;
pub(crate) mod handover;
pub(crate) mod promote;
pub(crate) mod rollback;
pub(crate) mod route_plan;
pub(crate) mod scale_down;
pub(crate) mod validation;
pub(crate) mod wake;

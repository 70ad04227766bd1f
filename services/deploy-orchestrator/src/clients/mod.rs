//! What the workflows call: the deployment actor, routing, the event stream, the region
//! agents' instance reports and the image builder. Each client turns failures into step errors.

pub(crate) mod actor;
pub(crate) mod builder;
pub(crate) mod events;
pub(crate) mod instance_wait;
pub(crate) mod instances;
pub(crate) mod routing;

use std::time::Duration;

/// How long a call to another service may take before it counts as unavailable.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

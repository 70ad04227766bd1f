//! What the workflows call: the deployment actor, routing, the event stream and the region
//! agents' instance reports. Each client turns failures into step errors.

pub(crate) mod actor;
pub(crate) mod events;
pub(crate) mod instance_wait;
pub(crate) mod instances;
pub(crate) mod routing;

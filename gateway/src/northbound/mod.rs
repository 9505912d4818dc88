//! Northbound dialects: what the same device events become on MQTT besides
//! fieldgate's own topics.

pub mod homeassistant;

//! The MQTT side of a bridge, through `rumqttc`'s MQTT v5 client.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Bridge;
use super::local::LocalMessage;

pub(super) async fn run(_bridge: Arc<Bridge>, _messages: mpsc::Receiver<LocalMessage>) -> Result<(), String> {
    Err("MQTT bridges are not available yet".into())
}

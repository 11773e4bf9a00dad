//! The reference function of public cold-start comparisons: `lambda_runtime` and `serde_json`
//! echoing the event, built with this workspace's release profile. `bench-lambda` starts it
//! beside the project's functions.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}

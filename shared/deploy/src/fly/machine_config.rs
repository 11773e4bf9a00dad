//! The machine configuration of a project's web machine. An update replaces the whole
//! configuration, so this is always the complete one.

use serde_json::{Value, json};

use crate::image::APP_PORT;

/// The metadata key and value marking the project's web machine.
pub const ROLE_KEY: &str = "turbobackend";
pub const ROLE_WEB: &str = "web";
/// The path of the health check.
pub const HEALTH_PATH: &str = "/api/health";

/// Runs `image` (`registry.fly.io/<app>@sha256:…`) on a shared-cpu-1x with 256 MB, serving
/// HTTP on 80 and HTTPS on 443 (forwarded to 8080), started on demand and stopped when
/// idle, with an HTTP check on [`HEALTH_PATH`].
///
/// The restart policy is `on-failure`, what `fly deploy` gives its machines (flyctl
/// `internal/command/machine/run.go`, the `--restart` flag: "Default is 'on-failure' for
/// Machines created by 'fly deploy'"): under `always` a machine the proxy stopped for being
/// idle would be started again at once, and autostop would never save anything.
pub fn web_machine(image: &str) -> Value {
    json!({
        "image": image,
        "env": {"PORT": APP_PORT.to_string(), "NODE_ENV": "production"},
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
        "restart": {"policy": "on-failure"},
        "auto_destroy": false,
        "metadata": {ROLE_KEY: ROLE_WEB},
        "services": [{
            "protocol": "tcp",
            "internal_port": APP_PORT,
            "autostart": true,
            "autostop": "stop",
            "min_machines_running": 0,
            "ports": [
                {"port": 80, "handlers": ["http"], "force_https": true},
                {"port": 443, "handlers": ["tls", "http"]},
            ],
            "checks": [{
                "type": "http",
                "port": APP_PORT,
                "method": "GET",
                "path": HEALTH_PATH,
                "protocol": "http",
                "interval": "15s",
                "timeout": "5s",
                "grace_period": "10s",
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_machine_serves_8080_behind_80_and_443_with_a_health_check() {
        let c = web_machine("registry.fly.io/a@sha256:00");
        assert_eq!(c["image"], "registry.fly.io/a@sha256:00");
        let service = &c["services"][0];
        assert_eq!(service["internal_port"], 8080);
        assert_eq!(service["ports"][1]["handlers"], json!(["tls", "http"]));
        assert_eq!(service["checks"][0]["path"], "/api/health");
        assert_eq!(c["restart"]["policy"], "on-failure");
        assert_eq!(c["guest"]["memory_mb"], 256);
    }
}

//! Which way an image goes into an engine, decided from what the engine says about itself
//! (`docker info`, `docker version`), not from the shape of its address.
//!
//! - The relay ([`crate::relay`]) when the engine shares this host's loopback: it pulls
//!   from cudaimg on 127.0.0.1, importing each layer while later ones download. Which
//!   bytes it is served follows its image store ([`Serve`]).
//! - A streamed archive (`docker load`) otherwise: Docker Desktop and other Engines in a
//!   VM (their 127.0.0.1 is the VM's), rootless Engines (a network namespace of their
//!   own), Engines on other hosts, Podman (which pulls plain HTTP only from registries
//!   marked insecure), and images with no tag to give them.

use cudaimg_docker::EngineInfo;

pub use crate::relay::Serve;

/// The route the user asked for (`CUDAIMG_LOAD_VIA`), else [`Via::Auto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    #[default]
    Auto,
    Relay,
    Archive,
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "auto" => Ok(Via::Auto),
            "relay" => Ok(Via::Relay),
            "archive" => Ok(Via::Archive),
            other => Err(format!(
                "`{other}` is not a route: use `relay`, `archive` or `auto`"
            )),
        }
    }
}

/// The way chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Relay(Serve),
    /// A streamed archive, and why the relay was not used.
    Archive(String),
}

/// Where a Docker-API engine keeps images: what `--json` calls `store`.
pub fn store_of(info: &EngineInfo) -> &'static str {
    if info.podman {
        "podman"
    } else if info.containerd_store() {
        "containerd"
    } else {
        "graphdriver"
    }
}

/// The route for a Docker-API engine. `local`: reached through a unix socket or this
/// host's loopback; `tagged`: the image has a tag to give it.
pub fn choose(info: &EngineInfo, local: bool, tagged: bool, via: Via) -> Route {
    let serve = if info.containerd_store() {
        Serve::Upstream
    } else {
        Serve::Diffs
    };
    let why_not = if via == Via::Archive {
        Some("`CUDAIMG_LOAD_VIA=archive` asks for the archive".to_owned())
    } else if !tagged {
        Some("the image has no tag to give it (a pull by digest)".to_owned())
    } else if via == Via::Relay {
        None
    } else if !local {
        Some("the Engine is on another host".to_owned())
    } else if info.in_vm() {
        Some(format!(
            "the Engine runs in a VM ({}), whose 127.0.0.1 is not this host's",
            if info.operating_system.is_empty() {
                &info.kernel_version
            } else {
                &info.operating_system
            }
        ))
    } else if info.rootless {
        Some("a rootless Engine has a loopback of its own".to_owned())
    } else if info.podman {
        Some("Podman pulls over plain HTTP only from registries marked insecure".to_owned())
    } else {
        None
    };
    match why_not {
        Some(why) => Route::Archive(why),
        None => Route::Relay(serve),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(f: impl FnOnce(&mut EngineInfo)) -> EngineInfo {
        let mut i = EngineInfo {
            version: "28.5.2".into(),
            storage_driver: "overlay2".into(),
            operating_system: "Debian GNU/Linux forky/sid".into(),
            kernel_version: "6.1.0-30-amd64".into(),
            ..EngineInfo::default()
        };
        f(&mut i);
        i
    }

    fn containerd(i: &mut EngineInfo) {
        i.storage_driver = "overlayfs".into();
        i.driver_type = Some("io.containerd.snapshotter.v1".into());
    }

    #[test]
    fn each_store_gets_the_relay_variant_it_can_take() {
        assert_eq!(
            choose(&info(|_| {}), true, true, Via::Auto),
            Route::Relay(Serve::Diffs)
        );
        let c = info(containerd);
        assert_eq!(store_of(&c), "containerd");
        assert_eq!(
            choose(&c, true, true, Via::Auto),
            Route::Relay(Serve::Upstream)
        );
        assert_eq!(
            choose(&c, true, true, Via::Relay),
            Route::Relay(Serve::Upstream)
        );
    }

    #[test]
    fn engines_that_cannot_reach_this_hosts_loopback_get_the_archive_and_say_why() {
        let cases: Vec<(EngineInfo, bool, &str)> = vec![
            (
                info(|i| i.operating_system = "Docker Desktop".into()),
                true,
                "VM",
            ),
            (
                info(|i| i.kernel_version = "6.6.32-linuxkit".into()),
                true,
                "VM",
            ),
            (
                info(|i| i.kernel_version = "5.15.153.1-microsoft-standard-WSL2".into()),
                true,
                "VM",
            ),
            (info(|i| i.rootless = true), true, "rootless"),
            (info(|i| i.podman = true), true, "Podman"),
            (info(|_| {}), false, "another host"),
        ];
        for (i, local, why) in cases {
            match choose(&i, local, true, Via::Auto) {
                Route::Archive(reason) => assert!(reason.contains(why), "{reason} / {why}"),
                Route::Relay(_) => panic!("{i:?} should not get the relay"),
            }
        }
        assert!(matches!(
            choose(&info(|_| {}), true, false, Via::Relay),
            Route::Archive(r) if r.contains("no tag")
        ));
        assert!(matches!(
            choose(&info(|_| {}), true, true, Via::Archive),
            Route::Archive(r) if r.contains("CUDAIMG_LOAD_VIA")
        ));
        // Asked for, the relay is tried even where the guess says no.
        assert_eq!(
            choose(&info(|i| i.rootless = true), true, true, Via::Relay),
            Route::Relay(Serve::Diffs)
        );
    }

    #[test]
    fn a_route_that_is_not_one_is_refused_with_the_ones_there_are() {
        assert_eq!("archive".parse::<Via>(), Ok(Via::Archive));
        assert_eq!("".parse::<Via>(), Ok(Via::Auto));
        let e = "relays".parse::<Via>().expect_err("not a route");
        assert!(e.contains("relay") && e.contains("archive"), "{e}");
    }
}

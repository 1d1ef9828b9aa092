//! The two HTTP worlds Lodge serves, told apart by what a component exports.
//!
//! - WASI 0.2, world `wasi:http/proxy`: exports `wasi:http/incoming-handler@0.2.x`
//!   (`handle(request, response-outparam)`; the guest sets its response through
//!   the out-param and may keep writing the body after).
//! - WASI 0.3, world `wasi:http/service`: exports `wasi:http/handler@0.3.x`
//!   (`async handle(request) -> result<response, error-code>`; bodies are
//!   component-model streams, driven by the store's event loop).
//!
//! A component exporting both is served as 0.3 (as `wasmtime serve` does).
//! Release candidates of 0.3 (`0.3.0-rc-…`) are not WASI 0.3 and are refused.

use wasmtime::component::Component;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use super::LoadError;
use crate::capability::GuestState;

/// The export of the WASI 0.2 world.
const P2_EXPORT: &str = "wasi:http/incoming-handler@0.2.";
/// The export of the WASI 0.3 world.
const P3_EXPORT: &str = "wasi:http/handler@0.3.";

/// Which HTTP world a component serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `wasi:http/proxy` (WASI 0.2).
    Proxy,
    /// `wasi:http/service` (WASI 0.3).
    Service,
}

impl World {
    /// How the API and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "wasi:http/proxy@0.2",
            Self::Service => "wasi:http/service@0.3",
        }
    }
}

/// A released version after `prefix` (no pre-release suffix).
fn released(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('-'))
}

/// The world `component` serves, or why it serves none Lodge accepts.
pub(crate) fn classify(engine: &Engine, component: &Component) -> Result<World, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let imports_handler = ty
        .imports(engine)
        .any(|(name, _)| name.starts_with(P3_EXPORT));
    if !imports_handler {
        if exports.iter().any(|name| released(name, P3_EXPORT)) {
            return Ok(World::Service);
        }
        if exports.iter().any(|name| released(name, P2_EXPORT)) {
            return Ok(World::Proxy);
        }
    }
    let hint = if imports_handler {
        " (it imports `wasi:http/handler`: a `wasi:http/middleware` component, which needs \
         another handler to forward to; Lodge serves apps, not middleware)"
    } else if exports.iter().any(|n| n.starts_with(P3_EXPORT)) {
        " (a release candidate of WASI 0.3: rebuild against the released `wasi:http@0.3.0`)"
    } else if exports.iter().any(|n| n.starts_with("wasi:cli/run@")) {
        " (it is a command, `wasi:cli/run`, not an HTTP handler)"
    } else {
        ""
    };
    let found = if exports.is_empty() {
        "nothing".to_owned()
    } else {
        exports
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(LoadError::UnsupportedWorld(format!("{found}{hint}")))
}

/// Whether the component in `wasm` exports a WASI 0.3 handler, read from its
/// top-level export section without compiling it (a host with WASI 0.3 off
/// cannot even validate such a component, and says why instead).
pub(crate) fn exports_p3_handler(wasm: &[u8]) -> bool {
    let mut depth = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::Version { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 1 => {
                if exports
                    .into_iter()
                    .flatten()
                    .any(|export| export.name.name.starts_with(P3_EXPORT))
                {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// A component's handler, ready to instantiate.
pub(crate) enum HandlerPre {
    /// WASI 0.2.
    Proxy(ProxyPre<GuestState>),
    /// WASI 0.3.
    Service(ServicePre<GuestState>),
}

impl HandlerPre {
    /// Checks that the pre-instantiated component has `world`'s export, typed right.
    pub fn new(
        world: World,
        pre: wasmtime::component::InstancePre<GuestState>,
    ) -> Result<Self, LoadError> {
        let typed = |e: wasmtime::Error| LoadError::NotAnHttpHandler(format!("{e:#}"));
        Ok(match world {
            World::Proxy => Self::Proxy(ProxyPre::new(pre).map_err(typed)?),
            World::Service => Self::Service(ServicePre::new(pre).map_err(typed)?),
        })
    }

    /// The engine its stores must be made on.
    pub fn engine(&self) -> &Engine {
        match self {
            Self::Proxy(pre) => pre.engine(),
            Self::Service(pre) => pre.engine(),
        }
    }

    /// Its world.
    pub fn world(&self) -> World {
        match self {
            Self::Proxy(_) => World::Proxy,
            Self::Service(_) => World::Service,
        }
    }

    /// A new instance in `store`.
    pub async fn instantiate(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Handler> {
        Ok(match self {
            Self::Proxy(pre) => Handler::Proxy(pre.instantiate_async(store).await?),
            Self::Service(pre) => Handler::Service(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's handler.
pub(crate) enum Handler {
    /// WASI 0.2.
    Proxy(Proxy),
    /// WASI 0.3.
    Service(Service),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_released_versions_count() {
        assert!(released("wasi:http/handler@0.3.0", P3_EXPORT));
        assert!(released("wasi:http/handler@0.3.1", P3_EXPORT));
        assert!(!released(
            "wasi:http/handler@0.3.0-rc-2025-09-16",
            P3_EXPORT
        ));
        assert!(released("wasi:http/incoming-handler@0.2.12", P2_EXPORT));
        assert!(!released("wasi:http/incoming-handler@0.20.0", P2_EXPORT));
    }
}

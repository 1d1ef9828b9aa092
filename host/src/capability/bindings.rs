//! Host bindings generated from `wit/` (world `lodge:platform/guest-imports`).
//! Generated code only; the capability modules implement its traits.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "lodge:platform/guest-imports",
    imports: { default: async | trappable | tracing },
    with: {
        "wasi:keyvalue/store.bucket": super::keyvalue::Bucket,
        "wasi:keyvalue/atomics.cas": super::keyvalue::Cas,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => super::keyvalue::Error,
        "lodge:platform/types.error" => super::PlatformError,
    },
});

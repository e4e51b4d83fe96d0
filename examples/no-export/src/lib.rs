//! A bad module for tests: a valid shared library that exports C functions,
//! but not relive's entry point (no `export_module!`). Loading it must fail
//! with `LoadError::NoExport`.

/// Some C function, so the library is not empty.
#[unsafe(no_mangle)]
pub extern "C" fn no_export_answer() -> u32 {
    42
}

/// A near miss of the real symbol's name.
#[unsafe(no_mangle)]
pub extern "C" fn relive_module_vtable_v0() -> *const u8 {
    std::ptr::null()
}

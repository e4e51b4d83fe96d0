//! A bad module for tests: it exports relive's entry point, but its vtable
//! has `abi_version: 999`. Loading it must fail with `LoadError::AbiMismatch`.

use relive_abi::ModuleVtable;
use relive_abi::prelude::*;

/// A trivial state.
#[derive(Serialize, Deserialize)]
pub struct State {
    n: u64,
}

impl Behaviour for State {
    type Init = u64;
    type Call = ();
    type Reply = u64;
    type Cast = ();
    type Info = ();

    fn init(n: u64, _ctx: &mut Ctx<'_>) -> Result<Self, Error> {
        Ok(State { n })
    }

    fn handle_call(&mut self, _request: (), _ctx: &mut Ctx<'_>) -> u64 {
        self.n
    }
}

/// relive's entry point, with a broken vtable.
#[unsafe(no_mangle)]
pub extern "C" fn relive_module_vtable() -> *const ModuleVtable {
    static VTABLE: ModuleVtable =
        ModuleVtable { abi_version: 999, ..relive_abi::glue::vtable::<State>("bad_abi", "1.0.0") };
    &VTABLE
}

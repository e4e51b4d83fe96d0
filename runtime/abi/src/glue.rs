//! The module side of every [`ModuleVtable`] function, generic over the
//! author's [`Behaviour`]. Used by [`crate::export_module!`]; not for direct
//! use.
//!
//! Each function decodes its input, runs the author's callback under
//! `catch_unwind`, and reports through a [`Status`] and the out buffer: no
//! panic leaves this module, no memory of the host is freed here, and a
//! state pointer is always a `Box<B>` made and freed by this same code.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde_reflection::{Samples, Tracer, TracerConfig};

use crate::author::{
    Behaviour, ConfigChange, Ctx, Error, Extra, Info, MonitorRef, Pid, PortEvent, PortId, StateBytes,
};
use crate::ffi::{
    ABI_VERSION, HostCtx, INFO_DOWN, INFO_EXIT, INFO_MESSAGE, INFO_PORT, MAGIC, ModuleVtable, OutBuf, RBytes,
    RStr, Status,
};

/// Builds the vtable of module `name` at `version` around `B`.
pub const fn vtable<B: Behaviour>(name: &'static str, version: &'static str) -> ModuleVtable {
    ModuleVtable {
        magic: MAGIC,
        abi_version: ABI_VERSION,
        abi_crate_version: RStr::from_static(crate::ABI_CRATE_VERSION),
        name: RStr::from_static(name),
        version: RStr::from_static(version),
        describe_types: describe_types::<B>,
        init: init::<B>,
        handle_call: handle_call::<B>,
        handle_cast: handle_cast::<B>,
        handle_info: handle_info::<B>,
        export_state: export_state::<B>,
        code_change: code_change::<B>,
        downgrade: downgrade::<B>,
        drop_state: drop_state::<B>,
        config_change: config_change::<B>,
        health: health::<B>,
        handle_port_data: handle_port_data::<B>,
    }
}

fn panic_text(panic: Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning its result or panic into a status and out-buffer text.
///
/// # Safety
/// `out` must be a valid `OutBuf` for the call.
unsafe fn guarded(out: *mut OutBuf, f: impl FnOnce(&mut OutBuf) -> Result<(), (Status, String)>) -> u32 {
    // SAFETY: the host passes a valid, exclusive OutBuf for the call.
    let out = unsafe { &mut *out };
    match catch_unwind(AssertUnwindSafe(|| f(out))) {
        Ok(Ok(())) => Status::Ok as u32,
        Ok(Err((status, text))) => {
            out.push(text.as_bytes());
            status as u32
        }
        Err(panic) => {
            // Formatting the panic text cannot itself panic in practice; if
            // the out buffer's write did, we would be in the host's code.
            out.push(panic_text(panic).as_bytes());
            Status::Panic as u32
        }
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, (Status, String)> {
    rmp_serde::from_slice(bytes).map_err(|e| (Status::BadInput, format!("{what} did not decode: {e}")))
}

fn failed(error: Error) -> (Status, String) {
    (Status::Error, error.message().to_string())
}

fn encode_into<T: serde::Serialize>(value: &T, out: &mut OutBuf) -> Result<(), (Status, String)> {
    // A local buffer, not a reused thread-local one: a thread-local with a
    // destructor registers that destructor with glibc, which then keeps this
    // library mapped until the thread exits, so a purge could never unmap it.
    let mut bytes = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut bytes, value)
        .map_err(|e| (Status::Error, format!("encoding: {e}")))?;
    out.push(&bytes);
    Ok(())
}

/// # Safety
/// `state` is a `*mut B` made by this module's `init` or `code_change`.
unsafe fn state_mut<'a, B>(state: *mut c_void) -> &'a mut B {
    // SAFETY: the host only passes state pointers this module returned, and
    // gives each to one call at a time (one process, one worker).
    unsafe { &mut *(state as *mut B) }
}

unsafe extern "C" fn describe_types<B: Behaviour>(out: *mut OutBuf) -> u32 {
    // SAFETY: `out` is valid for the call (host's promise).
    unsafe {
        guarded(out, |out| {
            let mut tracer = Tracer::new(TracerConfig::default());
            let samples = Samples::new();
            let mut text = String::new();
            for (role, traced) in [
                ("state", tracer.trace_type::<B>(&samples).map(|(f, _)| f)),
                ("init", tracer.trace_type::<B::Init>(&samples).map(|(f, _)| f)),
                ("call", tracer.trace_type::<B::Call>(&samples).map(|(f, _)| f)),
                ("cast", tracer.trace_type::<B::Cast>(&samples).map(|(f, _)| f)),
                ("info", tracer.trace_type::<B::Info>(&samples).map(|(f, _)| f)),
            ] {
                // A type serde-reflection cannot trace (custom Deserialize
                // logic) is described by its name only.
                match traced {
                    Ok(format) => text.push_str(&format!("{role}: {format:?}\n")),
                    Err(_) => text.push_str(&format!("{role}: {}\n", std::any::type_name::<B>())),
                }
            }
            text.push_str(&format!("reply: {}\n", std::any::type_name::<B::Reply>()));
            match tracer.registry() {
                Ok(registry) => text.push_str(&format!("{registry:?}")),
                Err(e) => text.push_str(&format!("registry incomplete: {e}")),
            }
            out.push(text.as_bytes());
            Ok(())
        })
    }
}

unsafe extern "C" fn init<B: Behaviour>(
    host: *const HostCtx,
    arg: RBytes,
    state_out: *mut *mut c_void,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: the host passes valid pointers for the call; `arg` is readable.
    unsafe {
        guarded(out, |_| {
            let arg: B::Init = decode(arg.as_slice(), "the init argument")?;
            let mut ctx = Ctx::from_host(&*host);
            let state = B::init(arg, &mut ctx).map_err(failed)?;
            *state_out = Box::into_raw(Box::new(state)) as *mut c_void;
            Ok(())
        })
    }
}

unsafe extern "C" fn handle_call<B: Behaviour>(
    state: *mut c_void,
    host: *const HostCtx,
    request: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |out| {
            let request: B::Call = decode(request.as_slice(), "the call request")?;
            let mut ctx = Ctx::from_host(&*host);
            let reply = state_mut::<B>(state).handle_call(request, &mut ctx);
            encode_into(&reply, out)
        })
    }
}

unsafe extern "C" fn handle_cast<B: Behaviour>(
    state: *mut c_void,
    host: *const HostCtx,
    message: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |_| {
            let message: B::Cast = decode(message.as_slice(), "the cast")?;
            let mut ctx = Ctx::from_host(&*host);
            state_mut::<B>(state).handle_cast(message, &mut ctx);
            Ok(())
        })
    }
}

unsafe extern "C" fn handle_info<B: Behaviour>(
    state: *mut c_void,
    host: *const HostCtx,
    kind: u32,
    message: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |_| {
            let bytes = message.as_slice();
            let info = match kind {
                INFO_MESSAGE => Info::Message(decode::<B::Info>(bytes, "the message")?),
                INFO_EXIT => {
                    let (from, reason): (u64, String) = decode(bytes, "an exit message")?;
                    Info::Exit { from: Pid(from), reason }
                }
                INFO_DOWN => {
                    let (monitor, pid, reason): (u64, u64, String) = decode(bytes, "a down message")?;
                    Info::Down { monitor: MonitorRef { id: monitor, pid: Pid(pid) }, pid: Pid(pid), reason }
                }
                INFO_PORT => Info::Port(decode::<PortEvent>(bytes, "a port event")?),
                other => return Err((Status::BadInput, format!("unknown message kind {other}"))),
            };
            let mut ctx = Ctx::from_host(&*host);
            state_mut::<B>(state).handle_info(info, &mut ctx);
            Ok(())
        })
    }
}

/// The bytes a port read, as the [`PortEvent::Data`] `handle_info` gets:
/// the one copy of them on the module's side.
unsafe extern "C" fn handle_port_data<B: Behaviour>(
    state: *mut c_void,
    host: *const HostCtx,
    port: u64,
    bytes: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |_| {
            let info = Info::Port(PortEvent::Data { port: PortId(port), bytes: bytes.as_slice().to_vec() });
            let mut ctx = Ctx::from_host(&*host);
            state_mut::<B>(state).handle_info(info, &mut ctx);
            Ok(())
        })
    }
}

unsafe extern "C" fn export_state<B: Behaviour>(state: *mut c_void, out: *mut OutBuf) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |out| {
            let bytes = StateBytes::encode(state_mut::<B>(state)).map_err(failed)?;
            out.push(&bytes.0);
            Ok(())
        })
    }
}

fn parse_version(text: Option<&str>) -> Result<semver::Version, (Status, String)> {
    let text = text.ok_or((Status::BadInput, "version is not UTF-8".to_string()))?;
    semver::Version::parse(text).map_err(|e| (Status::BadInput, format!("version {text:?}: {e}")))
}

unsafe extern "C" fn code_change<B: Behaviour>(
    from_version: RStr,
    old_state: RBytes,
    extra: RBytes,
    state_out: *mut *mut c_void,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise).
    unsafe {
        guarded(out, |_| {
            let from = parse_version(from_version.as_str())?;
            let old = StateBytes(old_state.as_slice().to_vec());
            let extra = Extra(extra.as_slice().to_vec());
            let state = B::code_change(&from, old, extra).map_err(failed)?;
            *state_out = Box::into_raw(Box::new(state)) as *mut c_void;
            Ok(())
        })
    }
}

unsafe extern "C" fn downgrade<B: Behaviour>(state: *mut c_void, to_version: RStr, out: *mut OutBuf) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |out| {
            let to = parse_version(to_version.as_str())?;
            let bytes = state_mut::<B>(state).downgrade(&to).map_err(failed)?;
            out.push(&bytes.0);
            Ok(())
        })
    }
}

unsafe extern "C" fn config_change<B: Behaviour>(
    state: *mut c_void,
    host: *const HostCtx,
    old: RBytes,
    new: RBytes,
    out: *mut OutBuf,
) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |_| {
            let change = ConfigChange::from_bytes(old.as_slice().to_vec(), new.as_slice().to_vec());
            let mut ctx = Ctx::from_host(&*host);
            state_mut::<B>(state).config_change(change, &mut ctx).map_err(failed)
        })
    }
}

unsafe extern "C" fn health<B: Behaviour>(state: *mut c_void, host: *const HostCtx, out: *mut OutBuf) -> u32 {
    // SAFETY: valid pointers for the call (host's promise); see state_mut.
    unsafe {
        guarded(out, |_| {
            let mut ctx = Ctx::from_host(&*host);
            state_mut::<B>(state).health(&mut ctx).map_err(failed)
        })
    }
}

unsafe extern "C" fn drop_state<B: Behaviour>(state: *mut c_void) {
    if state.is_null() {
        return;
    }
    // SAFETY: `state` is a Box<B> this module made (see state_mut) and the
    // host frees each state exactly once. A panicking Drop is contained.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { drop(Box::from_raw(state as *mut B)) }));
}

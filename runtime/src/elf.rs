//! A structural check of an ELF shared library before `dlopen` sees it.
//!
//! glibc maps a library's segments as the program headers describe them and
//! trusts them: a truncated file maps pages past its end, and the first
//! touch of such a page kills the whole node with SIGBUS. So every part the
//! loader will map or read must lie inside the file, and the file must be a
//! shared object for this machine, before it is opened.

/// Why a file is not a loadable shared library for this machine.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    const HEADER: usize = 64;
    const PROGRAM_HEADER: usize = 56;
    const PT_LOAD: u32 = 1;
    const ET_DYN: u16 = 3;
    if bytes.len() < HEADER {
        return Err(format!(
            "{} bytes is shorter than an ELF header ({HEADER} bytes): the file is truncated",
            bytes.len()
        ));
    }
    if bytes[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    if bytes[5] != if cfg!(target_endian = "little") { 1 } else { 2 } {
        return Err("ELF byte order differs from this machine's".into());
    }
    let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u16_at(16) != ET_DYN {
        return Err(format!(
            "ELF type {} is not a shared object (3): build with crate-type = [\"cdylib\"]",
            u16_at(16)
        ));
    }
    if let Some(expected) = MACHINE
        && u16_at(18) != expected
    {
        return Err(format!("built for ELF machine {}, this machine is {expected}", u16_at(18)));
    }
    let len = bytes.len() as u64;
    let within = |what: &str, offset: u64, size: u64| match offset.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(format!(
            "{what} spans bytes {offset}..{} but the file has {len}: the file is truncated or corrupt",
            offset.saturating_add(size)
        )),
    };
    let (phoff, phentsize, phnum) = (u64_at(32), usize::from(u16_at(54)), usize::from(u16_at(56)));
    if phnum == 0 || phentsize < PROGRAM_HEADER {
        return Err("no program headers: not a loadable library".into());
    }
    within("the program header table", phoff, (phentsize * phnum) as u64)?;
    for index in 0..phnum {
        let header = phoff as usize + index * phentsize;
        if u32_at(header) == PT_LOAD {
            within(&format!("loadable segment {index}"), u64_at(header + 8), u64_at(header + 32))?;
        }
    }
    let (shoff, shentsize, shnum) = (u64_at(40), u64::from(u16_at(58)), u64::from(u16_at(60)));
    if shoff != 0 {
        within("the section header table", shoff, shentsize * shnum)?;
    }
    Ok(())
}

/// This machine's `e_machine`, where known.
const MACHINE: Option<u16> = if cfg!(target_arch = "x86_64") {
    Some(62)
} else if cfg!(target_arch = "aarch64") {
    Some(183)
} else {
    None
};

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn the_running_test_binary_is_not_a_shared_object_but_is_well_formed_elf() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are position-independent executables: ET_DYN too.
        assert_eq!(check(&bytes), Ok(()));
        for len in [10, 63, 64, 200, bytes.len() / 2, bytes.len() - 1] {
            assert!(check(&bytes[..len]).is_err(), "truncated to {len} bytes yet accepted");
        }
    }
}

//! The TOML config file (`retrybudget --config FILE`): any text is either accepted or refused with a usage
//! message — never a panic — through the agent's real parsing, leaf parsers and policy validation.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(message) = retrybudget::config::fuzz_config_text(text) {
            assert!(!message.is_empty());
        }
    }
});

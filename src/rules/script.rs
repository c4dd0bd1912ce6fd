//! The Rhai sandbox's one engine configuration. Scripts are compiled once,
//! when their rule is loaded; `eval` and `import` are not part of the
//! language here, so a script that uses them fails `homeostat check`.

use std::sync::LazyLock;

use rhai::{AST, Engine};

/// Deepest expression nesting a script may have (statements, functions).
pub const MAX_EXPR_DEPTH: usize = 64;
pub const MAX_FUNCTION_EXPR_DEPTH: usize = 32;

/// The engine used to compile (and, with host modules, run) action scripts.
pub fn engine() -> Engine {
    let mut engine = Engine::new();
    // No code from strings, no code from files.
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FUNCTION_EXPR_DEPTH);
    engine
}

static COMPILER: LazyLock<Engine> = LazyLock::new(engine);

/// Compiles a script; a syntax error gives its 1-based line and message.
pub fn compile(source: &str) -> Result<AST, (usize, String)> {
    COMPILER.compile(source).map_err(|e| {
        let line = e.position().line().unwrap_or(1);
        (line, format!("script error: {}", e.err_type()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_and_forbidden_symbols_name_their_line() {
        assert!(compile("let x = 1;\nx + 1").is_ok());
        let (line, message) = compile("let x = 1;\nlet = ;").unwrap_err();
        assert_eq!(line, 2, "{message}");
        let (line, _) = compile("let a = 1;\n\neval(\"a\")").unwrap_err();
        assert_eq!(line, 3);
        let (line, _) = compile("import \"fs\" as fs;").unwrap_err();
        assert_eq!(line, 1);
    }
}

"""The `medisyn` command: Typer only (parse -> config -> API -> print), one module per command group."""

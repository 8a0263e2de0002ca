"""``adapt networks``: the installed adapter types and model families, their distributions and options."""

from __future__ import annotations

import click


@click.command("networks")
def networks() -> None:
    """List installed network types (with distribution, version and --network_args options) and
    model families (with their components and kohya prefixes)."""
    from adapters_core.options import COMMON_OPTIONS
    from adapters_core.plugins import get_registry

    registry = get_registry()
    for name in sorted(registry.types):
        network_type = registry.types[name]
        aliases = f" (aliases: {', '.join(network_type.aliases)})" if network_type.aliases else ""
        click.echo(f"{name}{aliases}  [{network_type.distribution} {network_type.version}]")
        click.echo(f"    {network_type.description}")
        if network_type.kohya_module:
            click.echo(f"    writes ss_network_module={network_type.kohya_module}")
        for option in network_type.options:
            click.echo(f"    {option.name}={option.type.__name__} (default {option.default}): {option.help}")
    click.echo("\ncommon options of every type (--network_args key=value):")
    for option in COMMON_OPTIONS:
        click.echo(f"    {option.name}: {option.help}")
    click.echo("\nmodel families (detected from the model; --v2 asks for SD 2.x):")
    for name, family in registry.families.items():
        origin = registry.family_origins[name]
        click.echo(f"{name}  [{origin.distribution} {origin.version}]")
        click.echo(f"    {family.description}; {family.blocks.count} U-Net blocks")
        parts = ", ".join(f"{part.name} ({part.kohya_prefix}_)" for part in family.components)
        click.echo(f"    components: {parts}")

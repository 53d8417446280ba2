"""Optional libraries: the error a missing one raises names the extra to install."""

from __future__ import annotations

__all__ = ["missing_torch"]


def missing_torch(who: str) -> ModuleNotFoundError:
    """The error for ``who`` (a module of inertia that needs PyTorch) when torch is not
    installed, saying how to install it. Raise it ``from`` the original error, and only when
    that error's ``name`` is ``"torch"`` (a broken install keeps its own error)."""
    return ModuleNotFoundError(
        f"{who} needs PyTorch, which is not installed: `pip install 'inertia[torch]'` "
        "(for the CPU-only build, first `pip install torch --index-url https://download.pytorch.org/whl/cpu`).",
        name="torch",
    )

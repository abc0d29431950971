"""Edit primitives: small, named, idempotent changes to one parsed file each."""

from .base import Conflict, Edit, FirstOf, Moot, Obsolete, OnlyWhere, Unless
from .formats import FORMATS
from .pysyntax import assign, call, defn, if_test, imports_from, matching, stmt
from .python import (
    AddElse,
    AddImport,
    InsertStatements,
    RenameName,
    ReplaceArgument,
    ReplaceStatement,
    SetDictEntry,
    WrapInCondition,
    found,
    missing,
)
from .snippets import snippet

__all__ = [
    "FORMATS",
    "AddElse",
    "AddImport",
    "Conflict",
    "Edit",
    "FirstOf",
    "InsertStatements",
    "Moot",
    "Obsolete",
    "OnlyWhere",
    "RenameName",
    "ReplaceArgument",
    "ReplaceStatement",
    "SetDictEntry",
    "WrapInCondition",
    "assign",
    "call",
    "defn",
    "if_test",
    "imports_from",
    "matching",
    "snippet",
    "stmt",
]

# Other formats: YAML workflows, TOML, Dockerfiles.
from .dockerfile import (
    AddArg,
    InsertInstructions,
    Instruction,
    ReplaceInstruction,
)
from .tomldoc import AddArrayItem
from .yamldoc import (
    AddCondition,
    AddJob,
    MergeMapping,
    SetEntry,
    SwitchOn,
    from_yaml,
    newer_action,
)

__all__ += [
    "AddArg",
    "AddArrayItem",
    "AddCondition",
    "AddJob",
    "InsertInstructions",
    "Instruction",
    "MergeMapping",
    "ReplaceInstruction",
    "SetEntry",
    "SwitchOn",
    "Unless",
    "found",
    "from_yaml",
    "missing",
    "newer_action",
]

"""The ``--admission-control-config-file``: an AdmissionConfiguration, and the PodSecurity plugin's part of it.

As kube-apiserver reads it (k8s.io/apiserver's ReadAdmissionConfiguration):
an ``apiserver.config.k8s.io/v1`` (or the older ``apiserver.k8s.io/v1alpha1``)
``AdmissionConfiguration`` lists ``plugins``, each ``{name, configuration}``
with the configuration inline or ``{name, path}`` with it in a file of its own,
relative to the configuration file's directory. YAML or JSON. Only a plugin
that runs asks for its configuration: the entry of any other plugin is
ignored, and its ``path`` is never read. The first entry for a name wins.

The PodSecurity plugin's configuration is a ``PodSecurityConfiguration``
(``pod-security.admission.config.k8s.io/v1``, v1beta1 or v1alpha1) of cluster
``defaults`` (the level and version of each mode when a namespace's labels do
not say) and ``exemptions`` (user names, namespaces, runtime class names),
validated as upstream's plugin validates it before it starts. Beyond
upstream's checks, unknown fields are refused: a misspelt ``enforce`` default
would otherwise leave the cluster privileged without a word.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..api import errors
from ..api.selectors import is_dns1123_subdomain
from ..api.validation import is_dns1123_label
from .podsecurity import MODES, parse_level, parse_version

log = logging.getLogger("kybernetes.apiserver.admissionconfig")

Obj = dict[str, Any]

ADMISSION_KIND = "AdmissionConfiguration"
# apiserver.k8s.io/v1alpha1 is where upstream's AdmissionConfiguration lived before v1.
ADMISSION_API_VERSIONS = ("apiserver.config.k8s.io/v1", "apiserver.k8s.io/v1alpha1")
POD_SECURITY = "PodSecurity"
POD_SECURITY_KIND = "PodSecurityConfiguration"
POD_SECURITY_API_VERSIONS = tuple(f"pod-security.admission.config.k8s.io/{v}" for v in ("v1", "v1beta1", "v1alpha1"))
# The plugins here that take a configuration; the others run as upstream's do with none.
CONFIGURABLE = (POD_SECURITY,)
# The admission plugins that run here, whether or not they take a configuration (for the log only).
_BUILTIN_PLUGINS = frozenset({"NamespaceLifecycle", "LimitRanger", "ServiceAccount", "NodeRestriction", POD_SECURITY,
                              "ResourceQuota", "DefaultStorageClass", "DefaultIngressClass"})
# Upstream's pre-AdmissionConfiguration files: one plugin's bare settings (ImagePolicyWebhook, PodNodeSelector).
_LEGACY_KEYS = ("imagePolicy", "podNodeSelectorPluginConfig")


class AdmissionConfigError(ValueError):
    """An admission configuration that cannot be used; the message is one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse(data: bytes, source: str) -> Any:
    try:
        return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise AdmissionConfigError(_one_line(f"{source}: not valid YAML or JSON: {e}")) from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AdmissionConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _type_meta(doc: Mapping[str, Any], kind: str, versions: tuple[str, ...], source: str) -> None:
    if doc.get("kind") != kind or doc.get("apiVersion") not in versions:
        raise AdmissionConfigError(
            f"{source}: expected kind {kind} of apiVersion {' or '.join(versions)}, "
            f"got kind {doc.get('kind')!r} of apiVersion {doc.get('apiVersion')!r}")


def read_admission_configuration(path: str | os.PathLike[str],
                                 plugins: Iterable[str] = CONFIGURABLE) -> dict[str, Obj | None]:
    """The configuration of each of ``plugins`` that the AdmissionConfiguration file at ``path`` names.

    The value is the plugin's decoded configuration object (inline, or read from
    its ``path``), or None where the entry gives neither (the plugin's defaults).
    Entries for other plugins are ignored (logged), as upstream ignores the
    configuration of a plugin that is not enabled. AdmissionConfigError (one
    line, naming the file) when the file cannot be read or is not an
    AdmissionConfiguration.
    """
    path = Path(path)
    source = str(path)
    doc = _parse(_read(path, "admission configuration"), source)
    if isinstance(doc, dict) and "apiVersion" not in doc and "kind" not in doc \
            and any(k in doc for k in _LEGACY_KEYS):
        # Upstream hands such a file to ImagePolicyWebhook or PodNodeSelector, which do not run here.
        log.warning("%s: a legacy ImagePolicyWebhook/PodNodeSelector configuration: ignored (those plugins "
                    "do not run here)", source)
        return {}
    if not isinstance(doc, dict):
        raise AdmissionConfigError(f"{source}: expected an {ADMISSION_KIND} object, got {_what(doc)}")
    _type_meta(doc, ADMISSION_KIND, ADMISSION_API_VERSIONS, source)
    errs: list[errors.FieldError] = []
    _unknown_fields(doc, {"apiVersion", "kind", "plugins"}, "", errs)
    entries = doc.get("plugins")
    if entries is None:
        entries = []
    elif not isinstance(entries, list):
        errs.append(errors.FieldError("TypeInvalid", "plugins", "must be a list", entries))
        entries = []
    wanted = set(plugins)
    found: dict[str, Obj] = {}
    for i, entry in enumerate(entries):
        at = f"plugins[{i}]"
        if not isinstance(entry, dict):
            errs.append(errors.FieldError("TypeInvalid", at, "must be an object", entry))
            continue
        _unknown_fields(entry, {"name", "path", "configuration"}, at, errs)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            errs.append(errors.required(f"{at}.name") if not name else
                        errors.FieldError("TypeInvalid", f"{at}.name", "must be a string", name))
            continue
        for key, want in (("path", str), ("configuration", dict)):
            if entry.get(key) is not None and not isinstance(entry[key], want):
                errs.append(errors.FieldError("TypeInvalid", f"{at}.{key}",
                                              "must be a string" if want is str else "must be an object",
                                              entry[key]))
        found.setdefault(name, entry)
    if errs:
        raise AdmissionConfigError(f"{source}: {_aggregate(errs)}")
    for name in found:
        if name not in wanted:
            log.warning("%s: the configuration of admission plugin %s is ignored: %s", source, name,
                        "it takes none here" if name in _BUILTIN_PLUGINS else "no such plugin runs here")
    out: dict[str, Obj | None] = {}
    for name, entry in found.items():
        if name not in wanted:
            continue
        if entry.get("configuration") is not None:
            out[name] = entry["configuration"]
        elif entry.get("path"):
            # Relative to the configuration file's directory, as upstream makes it absolute.
            plugin_path = path.parent / entry["path"]
            data = _read(plugin_path, f"the configuration of admission plugin {name}")
            out[name] = _parse(data, str(plugin_path)) if data.strip() else None
        else:
            out[name] = None
    return out



def pod_security_options(config: Any) -> dict[str, Any]:
    """``PodSecurity``'s keyword arguments from a PodSecurityConfiguration (None: the defaults).

    AdmissionConfigError, listing every problem as upstream's plugin does
    ("invalid configuration: defaults.enforce: Invalid value: ..."), for an
    unknown level, a bad version, exemptions that are not lists of valid
    names, duplicates and unknown fields.
    """
    if config is None:
        return {}
    where = f"admission plugin {POD_SECURITY}"
    if not isinstance(config, dict):
        raise AdmissionConfigError(f"{where}: expected a {POD_SECURITY_KIND} object, got {_what(config)}")
    _type_meta(config, POD_SECURITY_KIND, POD_SECURITY_API_VERSIONS, where)
    errs: list[errors.FieldError] = []
    _unknown_fields(config, {"apiVersion", "kind", "defaults", "exemptions"}, "", errs)
    defaults = _object(config.get("defaults"), "defaults", errs)
    exemptions = _object(config.get("exemptions"), "exemptions", errs)
    _unknown_fields(defaults, {m + s for m in MODES for s in ("", "-version")}, "defaults", errs)
    _unknown_fields(exemptions, {"usernames", "namespaces", "runtimeClasses"}, "exemptions", errs)
    chosen: dict[str, str] = {}
    # Upstream's order: enforce, warn, audit, each level before its version.
    for mode in ("enforce", "warn", "audit"):
        for key, parse, default in ((mode, parse_level, "privileged"),
                                    (mode + "-version", parse_version, "latest")):
            value = defaults.get(key)
            if value is None or value == "":
                value = default  # unset or empty: upstream's defaulting
            try:
                if not isinstance(value, str):
                    raise ValueError("must be a string")
                parse(value)
            except ValueError as e:
                errs.append(errors.invalid(f"defaults.{key}", value, str(e)))
                continue
            chosen[key] = value
    namespaces = _names(exemptions.get("namespaces"), "exemptions.namespaces", is_dns1123_label, errs)
    runtime_classes = _names(exemptions.get("runtimeClasses"), "exemptions.runtimeClasses", is_dns1123_subdomain,
                             errs)
    usernames = _names(exemptions.get("usernames"), "exemptions.usernames", _username, errs)
    if errs:
        raise AdmissionConfigError(f"{where}: invalid configuration: {_aggregate(errs)}")
    return {"defaults": chosen, "exempt_usernames": usernames, "exempt_namespaces": namespaces,
            "exempt_runtime_classes": runtime_classes}


def _username(value: str) -> list[str]:
    return ["username must not be empty"] if value == "" else []


def _names(value: Any, at: str, check, errs: list[errors.FieldError]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.append(errors.FieldError("TypeInvalid", at, "must be a list of strings", value))
        return []
    out: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str):
            errs.append(errors.FieldError("TypeInvalid", f"{at}[{i}]", "must be a string", name))
            continue
        problems = check(name)
        if problems:
            errs.append(errors.invalid(f"{at}[{i}]", name, ", ".join(problems)))
        elif name in out:
            errs.append(errors.duplicate(f"{at}[{i}]", name))
        else:
            out.append(name)
    return out


def _object(value: Any, at: str, errs: list[errors.FieldError]) -> Obj:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errs.append(errors.FieldError("TypeInvalid", at, "must be an object", value))
        return {}
    return value


def _unknown_fields(obj: Mapping[str, Any], known: set[str], path: str, errs: list[errors.FieldError]) -> None:
    for k in obj:
        if k not in known:
            errs.append(errors.FieldError("Invalid", f"{path}.{k}" if path else str(k), "unknown field"))


def _aggregate(errs: list[errors.FieldError]) -> str:
    """As apimachinery's aggregate prints a list of errors."""
    return str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"


def _what(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__

"""Configuration: schema validation with readable errors, semantic checks against the
discovered plugins, and expansion of the grid into run specs.  Everything here runs when
the Snakefile is parsed, before any job starts."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import logging
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import torch
import yaml

from slabbench._plugins import repo_root
from slabbench.api import PluginError, TrainContext, make_params, yaml_number_hint
from slabbench.models import MODELS, model_option_error
from slabbench.registry import available, dataset_class, method_class, misnamed

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RUN_DIR = "results/runs/{experiment}/{method}/seed={seed}"
#: the marker a training job writes last: which seeds it trained and where their records are
STACK_FILE = "results/runs/{experiment}/{method}/stack-{stack}.json"


class ConfigError(ValueError):
    """The configuration is malformed; the message names the bad value and the valid ones."""


def schema_path() -> Path:
    return (repo_root() or Path.cwd()) / "workflow" / "schemas" / "config.schema.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping (the safe loader keeps the
    last: a copied experiment block left under its old name would replace the first silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: the safe loader merges it
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: the safe loader's own error names it
                break
            if first is not None:
                raise ConfigError(f"{key_node.start_mark.name}, line {line}: the key {key!r} appears twice in one "
                                  f"mapping (first at line {first}); YAML would keep the last one")
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    """The YAML file ``path`` (safe loader; a key repeated in one mapping is a :class:`ConfigError`)."""
    with open(path) as fh:
        return yaml.load(fh, Loader=_UniqueKeyLoader)


#: experiment names that would write over another rule's output (results/figures/{experiment}.png)
RESERVED_EXPERIMENTS = {"deploy": "results/figures/deploy.png, the figure of rule deploy"}


def _names_keys(path: tuple) -> bool:
    """Whether the mapping at ``path`` is keyed by names or options of the configuration itself
    (experiments, methods, options), not a value of a plugin's option, which may be keyed freely."""
    n = len(path)
    return (n == 0 or path in (("experiments",), ("method_params",))
            or (n == 2 and path[0] in ("experiments", "method_params"))
            or (n in (3, 4) and path[0] == "experiments" and path[2] == "method_params")
            or (n == 3 and path[0] == "experiments" and path[2] in ("dataset_params", "model_params")))


def _value_problems(value: Any, path: tuple = ()) -> list[str]:
    """Numbers that are not finite (YAML's .nan / .inf pass every schema bound) anywhere, and
    names or option names that are not strings (an unquoted `5:` names no experiment) in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_where(path)} is {value!r}; numbers in a configuration must be finite"]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if not isinstance(k, str) and _names_keys(path):
                out.append(f"{_where(path)}: the key {k!r} is a {type(k).__name__}; names and options are strings "
                           f"(quote it: '{k}')")
            out += _value_problems(v, (*path, str(k)))
        return out
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _value_problems(v, (*path, i))]
    return []


def _where(path) -> str:
    out = "config"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _hint(bad: str, valid) -> str:
    close = difflib.get_close_matches(str(bad), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format(err: jsonschema.ValidationError) -> str:
    where, value, schema = _where(err.absolute_path), err.instance, err.schema
    if err.validator == "additionalProperties":
        valid = sorted(schema.get("properties", {}))
        bad = sorted(set(value) - set(valid))
        return "; ".join(f"unknown key {b!r} in {where}{_hint(b, valid)}; valid keys: {', '.join(valid)}" for b in bad)
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in value]
        return f"missing key(s) {', '.join(map(repr, missing))} in {where}; required keys: {', '.join(err.validator_value)}"
    if "propertyNames" in err.schema_path:
        return f"bad name {value!r} in {where}: names may use letters, digits, '_' and '-' and must start with a letter or digit"
    expected = schema.get("description") or err.message
    return f"{where} is {value!r}; expected {expected}{yaml_number_hint(value)}"


def _validate_schema(config: Any, schema: dict) -> None:
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(config).__name__}")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        # one line per problem: jsonschema reports a `required` failure once per missing key,
        # and each of those formats to the same line naming all of them
        lines = list(dict.fromkeys(_format(e) for e in errors))
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _apply_defaults(config: dict, schema: dict) -> dict:
    exp_props = schema["properties"]["experiments"]["additionalProperties"]["properties"]
    config = copy.deepcopy(config)
    config.setdefault("method_params", {})
    for exp in config["experiments"].values():
        for key, prop in exp_props.items():
            if "default" in prop:
                exp.setdefault(key, prop["default"])
        exp.setdefault("dataset_params", {})
        exp.setdefault("model_params", {})
        exp.setdefault("method_params", {})
    return config


#: keys of a method's options that the core reads itself (never passed to the method's ``Params``):
#: ``method`` names a variant's base method, ``restarts`` is the number of starts of each run,
#: ``restarts_keep`` / ``restarts_screen_epochs`` screen them (successive halving: after that
#: many epochs only the ``restarts_keep`` best starts train on)
RUN_DEFAULTS = {"restarts": 1, "restarts_keep": None, "restarts_screen_epochs": None}
RUN_OPTIONS = tuple(RUN_DEFAULTS)
CORE_OPTIONS = ("method", *RUN_OPTIONS)
VARIANT_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def variant_base(config: dict, method: str) -> str | None:
    """The base method of ``method`` when it is a variant (a global ``method_params`` entry
    that names a ``method``), else ``None``."""
    base = (config.get("method_params", {}).get(method) or {}).get("method")
    return base if isinstance(base, str) and base != method else None


def method_plugin(spec: dict) -> str:
    """The method file (stem in ``methods/``) a run spec trains: a variant's base, else its method."""
    return spec.get("variant_of") or spec["method"]


def _merged_options(config: dict, experiment: str, method: str) -> dict:
    exp = config["experiments"][experiment].get("method_params", {})
    opts: dict = {}
    base = variant_base(config, method)
    chain = ([base] if base else []) + [method]
    for name in chain:  # a variant: the base's options (global, then the experiment's), then its own
        opts.update(config.get("method_params", {}).get(name) or {})
        opts.update(exp.get(name) or {})
    opts.pop("method", None)
    return opts


def method_options(config: dict, experiment: str, method: str) -> dict:
    """The options ``experiment`` passes to ``method``'s plugin: the global ``method_params``
    overridden by the experiment's own; for a variant, its base method's options overridden by
    the variant's.  Core options (:data:`CORE_OPTIONS`) are left out, see :func:`run_options`."""
    return {k: v for k, v in _merged_options(config, experiment, method).items() if k not in CORE_OPTIONS}


def run_options(config: dict, experiment: str, method: str) -> dict:
    """The core's options of ``method``'s runs in ``experiment`` (:data:`RUN_OPTIONS`): each the
    method's own (its options, merged as in :func:`method_options`) where it sets one, else the
    experiment's, else the default (``restarts`` 1, no screening)."""
    opts = _merged_options(config, experiment, method)
    exp = config["experiments"][experiment]
    return {k: opts.get(k, exp.get(k, d)) for k, d in RUN_DEFAULTS.items()}


def run_option_error(options: dict, epochs: int) -> str | None:
    """Why the core options ``options`` (:func:`run_options`, or a run spec) are not valid for
    a run of ``epochs`` epochs, or None."""
    k = options.get("restarts", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        return f"option 'restarts' is {k!r}; expected an integer >= 1 (the starts of each run; 1 = one start)"
    keep, at = options.get("restarts_keep"), options.get("restarts_screen_epochs")
    if keep is None and at is None:
        return None
    if keep is None or at is None:
        return (f"options 'restarts_keep' ({keep!r}) and 'restarts_screen_epochs' ({at!r}) go together: after "
                f"restarts_screen_epochs epochs the restarts_keep best starts train on; set both or neither")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep < k:
        return f"option 'restarts_keep' is {keep!r}; expected an integer from 1 to restarts - 1 = {k - 1}"
    if isinstance(at, bool) or not isinstance(at, int) or not 1 <= at < epochs:
        return f"option 'restarts_screen_epochs' is {at!r}; expected an integer from 1 to epochs - 1 = {epochs - 1}"
    return None


def _method_error(method: str, options: dict, epochs: int, lr: float, name: str | None = None) -> str | None:
    """Why ``options`` are not valid for ``method`` (unknown key, bad type or choice), or None;
    ``name``: the variant of ``method`` they belong to, if any."""
    try:
        cls = method_class(method)
    except PluginError as e:  # a file without its Method class
        return str(e)
    owner = f"method {name!r} (a variant of {method!r})" if name and name != method else f"method {method!r}"
    fields = sorted(f.name for f in dataclasses.fields(cls.Params))
    for key in options:
        near = [] if key in fields else difflib.get_close_matches(key, list(RUN_OPTIONS), n=1)
        if near:
            return (f"unknown option {key!r} for {owner} (did you mean {near[0]!r}?); valid options: "
                    f"{', '.join(fields)}; and the core's options for every method: {', '.join(RUN_OPTIONS)}")
    try:
        params = make_params(cls.Params, options, owner)
        ctx = TrainContext(task="classification", n_train=1, epochs=epochs, steps_per_epoch=1,
                           lr=lr, device=torch.device("cpu"), spec=None)
        try:
            cls(params, ctx)  # constructors check choices (scope, schedule, ...)
        except PluginError:
            raise
        except Exception as e:  # a constructor that needs more than its options: say so, not a traceback
            frames = traceback.extract_tb(e.__traceback__)
            own = [f for f in frames if f.filename == inspect.getsourcefile(cls)]  # (the plugin's line, not torch's)
            where = (own or frames)[-1]
            return (f"{owner}: its constructor raised {type(e).__name__}: {e} ({where.filename}:{where.lineno}) when "
                    "the configuration's validation built it with a placeholder context (ctx.spec None, ctx.task "
                    "'classification', ctx.n_train 1, ctx.steps_per_epoch 1). A bad option should raise "
                    "slabbench.api.PluginError naming it; anything that depends on the data belongs in build() or the "
                    "training hooks, where ctx is the run's own (docs/extending.md)")
    except PluginError as e:
        msg = str(e)
        if msg.startswith("unknown option"):  # the method's own options; the core's apply to every method
            msg += f"; and the core's options for every method: {', '.join(RUN_OPTIONS)}"
        return msg
    return None


def _check_noise_sd(where: str, exp: dict, dparams: Any) -> None:
    """Warn when a data set that draws its noise (``noise_sd`` among its options) is fitted
    with another likelihood sd: the NLLs are then those of a misspecified likelihood (allowed,
    as a deliberate study; said, so it is never an accident)."""
    if not dataclasses.is_dataclass(dparams) or "noise_sd" not in {f.name for f in dataclasses.fields(dparams)}:
        return
    data_sd, lik_sd = float(dparams.noise_sd), float(exp["noise_sd"])
    if not math.isclose(data_sd, lik_sd, rel_tol=1e-9):
        log.warning("%s: the data set draws noise with sd %g (dataset_params.noise_sd) but the likelihood assumes "
                    "noise_sd %g; NLLs are under the assumed sd (set both alike unless this is deliberate)",
                    where, data_sd, lik_sd)


def _number(text: str, kind: str) -> Any:
    """``text`` as an int (``kind`` "integer") or a float ("number"), or ``text`` itself."""
    try:
        return int(text) if kind == "integer" else float(text)
    except ValueError:
        return text


def _command_line_types(config: Any, schema: dict) -> Any:
    """``config`` with what ``snakemake --config`` hands over as strings read as the schema's
    types, for top-level options: true / false (any case) of a boolean (``graphs=false``), and
    the items of a list of numbers (``seeds=[0,1]`` arrives as ['0', '1'])."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for key, prop in schema.get("properties", {}).items():
        value = out.get(key)
        if prop.get("type") == "boolean" and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            out[key] = value.strip().lower() == "true"
        kind = prop.get("items", {}).get("type") if prop.get("type") == "array" else None
        if kind in ("integer", "number") and isinstance(value, list):
            out[key] = [_number(v.strip(), kind) if isinstance(v, str) else v for v in value]
    return out


def validate(config: Any) -> dict:
    """Validate ``config`` (schema, then plugins and options); return it with defaults filled.

    Raises :class:`ConfigError` naming every bad value and the valid ones.
    """
    schema = load_yaml(schema_path())
    config = _command_line_types(config, schema)
    bad_values = _value_problems(config)
    if bad_values:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(bad_values))
    _validate_schema(config, schema)
    config = _apply_defaults(config, schema)
    problems: list[str] = []
    methods, datasets = available("method"), available("dataset")
    variants = {}  # variant name -> its base method
    rejected = set()  # declared variants already reported as bad
    declared = {m for m, o in config["method_params"].items() if (o or {}).get("method") is not None}
    for m, options in config["method_params"].items():
        base = (options or {}).get("method")
        if base is None:
            continue
        where = f"config.method_params.{m}.method"
        rejected.add(m)
        if m in methods:
            problems.append(f"{where}: {m!r} is a method file (methods/{m}.py); a variant of {base!r} needs a name of its own")
        elif not VARIANT_RE.match(m):
            problems.append(f"config.method_params: bad variant name {m!r}: names use lowercase letters, digits "
                            f"and '_' and start with a letter")
        elif base in declared:
            problems.append(f"{where}: {base!r} is itself a variant; a variant's base is one of the method files: "
                            f"{', '.join(methods)}")
        elif base not in methods:
            problems.append(f"{where}: unknown base method {base!r}{_hint(base, methods)}; a variant's base is one "
                            f"of the method files: {', '.join(methods)}{misnamed('method')}")
        else:
            variants[m] = base
            rejected.discard(m)
    names = methods + sorted(variants)
    have = (f"have {', '.join(methods)}" + (f" and the variants {', '.join(sorted(variants))}" if variants else "")
            + misnamed("method"))
    for m in config["methods"]:
        if m not in names and m not in rejected:
            problems.append(f"config.methods: unknown method {m!r}{_hint(m, names)}; {have}")
    # The global options of each method are checked once, where they are written (with the
    # epochs / lr of the first experiment that runs the method unchanged, else of the first
    # experiment); an experiment then only adds errors of its own overrides or of its epochs /
    # lr.  Method files first: a variant of a method whose options are bad is not reported again.
    bad_globals = set(rejected)
    for m in sorted(config["method_params"], key=lambda m: m in variants):
        if m not in names:
            if m not in rejected:
                problems.append(f"config.method_params: unknown method {m!r}{_hint(m, names)}; {have} (a variant "
                                f"names its base method: `{m}: {{method: <base>, ...}}`)")
            bad_globals.add(m)
            continue
        base = variants.get(m, m)
        if base in bad_globals:
            bad_globals.add(m)
            continue
        users = [n for n, e in config["experiments"].items()
                 if m in experiment_methods(config, n) and m not in e["method_params"] and base not in e["method_params"]]
        first = users[0] if users else next(iter(config["experiments"]))
        exp = config["experiments"][first]
        own = any(k in _merged_options(config, first, m) for k in RUN_OPTIONS)  # else its experiments' (checked there)
        err = (own and run_option_error(run_options(config, first, m), exp["epochs"])) or _method_error(
            base, method_options(config, first, m), epochs=exp["epochs"], lr=exp["lr"], name=m)
        if err:
            problems.append(f"config.method_params.{m}: {err}")
            bad_globals.add(m)
    for name, exp in config["experiments"].items():
        where = f"config.experiments.{name}"
        if name in RESERVED_EXPERIMENTS:
            problems.append(f"{where}: the name {name!r} is taken by {RESERVED_EXPERIMENTS[name]}; give the experiment "
                            f"another name")
        if exp["dataset"] not in datasets:
            problems.append(f"{where}.dataset: unknown data set {exp['dataset']!r}{_hint(exp['dataset'], datasets)}; have "
                            f"{', '.join(datasets)}{misnamed('dataset')}")
        else:
            try:
                cls = dataset_class(exp["dataset"])
            except PluginError as e:  # a file without its Dataset class
                problems.append(f"{where}.dataset: {e}")
            else:
                try:
                    dparams = make_params(cls.Params, exp["dataset_params"], f"data set {exp['dataset']!r}")
                except PluginError as e:
                    problems.append(f"{where}.dataset_params: {e}")
                else:
                    _check_noise_sd(where, exp, dparams)
        if exp["model"] not in MODELS:
            problems.append(f"{where}.model: unknown model {exp['model']!r}{_hint(exp['model'], MODELS)}; have {', '.join(MODELS)}")
        elif err := model_option_error(exp["model"], exp["model_params"]):  # option names and values
            problems.append(f"{where}.model_params: {err}")
        for m, options in exp["method_params"].items():
            if m not in names:
                problems.append(f"{where}.method_params: unknown method {m!r}{_hint(m, names)}; {have}")
            elif "method" in (options or {}):
                problems.append(f"{where}.method_params.{m}.method: variants are declared in the global "
                                f"method_params only; an experiment may override their options")
        for m in exp.get("methods", []):
            if m not in names:
                problems.append(f"{where}.methods: unknown method {m!r}{_hint(m, names)}; {have}")
        bad_here = set()
        for m in sorted(experiment_methods(config, name), key=lambda m: m in variants):  # method files first
            if m not in names or m in bad_globals or variants.get(m) in bad_here:
                continue
            err = run_option_error(run_options(config, name, m), exp["epochs"]) or _method_error(
                variants.get(m, m), method_options(config, name, m), epochs=exp["epochs"], lr=exp["lr"], name=m)
            if err:
                bad_here.add(m)
                own = m if m in exp["method_params"] else variants.get(m) if variants.get(m) in exp["method_params"] else None
                problems.append(f"{where}{f'.method_params.{own}' if own else ''}: {err}")
    if problems:
        problems = list(dict.fromkeys(problems))  # one line per problem
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def experiment_methods(config: dict, experiment: str) -> list[str]:
    """The experiment's own ``methods`` if it has them, else the global list."""
    return list(config["experiments"][experiment].get("methods") or config["methods"])


def experiment_seeds(config: dict, experiment: str) -> list[int]:
    """The experiment's own ``seeds`` (e.g. 30 simulation replicates) if it has them, else the global list."""
    return [int(s) for s in (config["experiments"][experiment].get("seeds") or config["seeds"])]


def experiment_sparsities(config: dict, experiment: str) -> list[float]:
    """The experiment's own sparsity ``targets`` if it has them, else the global list."""
    return [float(s) for s in (config["experiments"][experiment].get("sparsities") or config["sparsities"])]


def _read_only(self, *args, **kwargs):
    raise TypeError("a RunSpec is read-only; dataclasses.replace(spec, key=value) or dict(spec, key=value) "
                    "makes a changed copy")


@dataclass(frozen=True, eq=False, repr=False)
class RunSpec(dict):
    """One run of the grid (experiment x method x seed), resolved: every option the core reads,
    its default filled in.  :func:`run_specs` builds them; :meth:`of` reads one back from its
    dict form (a job's parameters, a record's ``spec``, a test's hand-written spec).

    A spec is also, read-only, its dict form (:meth:`to_dict`): the keys a run spec has always
    had, in their order, where an option at its default stays out (``restarts``, ``graphs``,
    ``on_divergence``, ...), so records, settings fingerprints and the workflow's job
    parameters are those of the plain dicts run specs used to be.  ``order``: the keys of that
    form (empty: the required keys, then every option that is not at its default)."""

    experiment: str
    dataset: str
    model: str
    method: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    sparsities: list  #: the sparsity targets (fractions of prunable weights)
    device: str  #: auto, cpu or cuda
    dataset_params: dict = field(default_factory=dict)
    model_params: dict = field(default_factory=dict)
    method_params: dict = field(default_factory=dict)  #: the method plugin's options (core options left out)
    noise_sd: float = 1.0  #: the regression likelihood's noise sd (the schema's default)
    finetune_epochs: int = 0  #: fine-tuning after pruning to a target (the schema's default: none)
    finetune_lr_factor: float = 0.1  #: its learning rate, a factor of ``lr`` (the schema's default)
    variant_of: str | None = None  #: the base method of a variant, else None
    restarts: int = RUN_DEFAULTS["restarts"]
    restarts_keep: int | None = RUN_DEFAULTS["restarts_keep"]
    restarts_screen_epochs: int | None = RUN_DEFAULTS["restarts_screen_epochs"]
    on_divergence: str = "stop"  #: stop (the job fails) or record (the run is recorded as diverged)
    graphs: bool = True  #: CUDA graphs: each kind of step captured once and replayed (CUDA only)
    compile: bool = False  #: the training step's loss and backward compiled by torch.compile (Inductor)
    #: stacked runs' noise: ``generators`` (one torch.Generator per run) or ``counter`` (one
    #: counter-based draw for the stack, :class:`slabbench.layers.stacked.CounterNoise`)
    noise_rng: str = "generators"
    flush_denormal: bool = True  #: subnormal floats flushed to zero on the CPU while training
    order: tuple = field(default=(), compare=False)

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only

    def __post_init__(self) -> None:
        keys = list(self.order) or [f.name for f in dataclasses.fields(self) if _required(f)]
        keys += [f.name for f in dataclasses.fields(self) if f.name != "order" and f.name not in keys
                 and not _required(f) and getattr(self, f.name) != _default(f)]
        dict.update(self, {k: getattr(self, k) for k in keys})

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> "RunSpec":
        """``spec`` as a :class:`RunSpec` (itself if it is one); its dict form keeps the keys of
        ``spec`` in their order.  Unknown or missing keys are an error naming them."""
        if isinstance(spec, RunSpec):
            return spec
        names = [f.name for f in dataclasses.fields(cls) if f.name != "order"]
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in a run spec; valid keys: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in spec]
        if missing:
            raise ValueError(f"a run spec needs the key(s) {', '.join(map(repr, missing))}; it has {', '.join(spec)}")
        values = copy.deepcopy(dict(spec))
        return cls(**values, order=tuple(values))

    @classmethod
    def default(cls, key: str) -> Any:
        """The value an optional key of a run spec has when the spec leaves it out."""
        return _default(next(f for f in dataclasses.fields(cls) if f.name == key))

    def to_dict(self) -> dict:
        """The spec's dict form (a fresh copy): what a record stores as its ``spec``."""
        return copy.deepcopy(dict(self))

    def __reduce__(self):
        return (RunSpec.of, (self.to_dict(),))

    @property
    def plugin(self) -> str:
        """The method file (stem in ``methods/``) the run trains: a variant's base, else its method."""
        return self.variant_of or self.method

    @property
    def stops_on_divergence(self) -> bool:
        return self.on_divergence == "stop"

    @property
    def screen(self) -> tuple[int, int] | None:
        """(epochs, starts kept) of the restarts' screening, or None without screening."""
        return None if self.restarts_keep is None else (int(self.restarts_screen_epochs), int(self.restarts_keep))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def run_specs(config: dict) -> list[RunSpec]:
    """Expand a validated config into one resolved spec per (experiment, method, seed)."""
    specs = []
    for name, exp in config["experiments"].items():
        for method in experiment_methods(config, name):
            for seed in experiment_seeds(config, name):
                spec = {k: copy.deepcopy(v) for k, v in exp.items()
                        if k not in ("method_params", "methods", "seeds", "sparsities", "device", "stack_size", "graphs",
                                     "compile", "noise_rng", "flush_denormal", *RUN_OPTIONS)}
                spec.update(experiment=name, method=method, seed=int(seed), device=exp.get("device") or config["device"],
                            sparsities=experiment_sparsities(config, name),
                            method_params=method_options(config, name, method))
                # what is not the default enters the spec (so the specs of earlier runs stay as they were)
                base = variant_base(config, method)
                if base:
                    spec["variant_of"] = base
                core = run_options(config, name, method)
                if core["restarts"] != 1:
                    spec["restarts"] = int(core["restarts"])
                for key in ("restarts_keep", "restarts_screen_epochs"):
                    if core[key] is not None:
                        spec[key] = int(core[key])
                if config.get("on_divergence", "stop") != "stop":  # the default stays out of the spec
                    spec["on_divergence"] = config["on_divergence"]
                if not exp.get("graphs", config.get("graphs", True)):  # CUDA graphs: on by default
                    spec["graphs"] = False
                if exp.get("compile", config.get("compile", False)):  # off by default
                    spec["compile"] = True
                noise_rng = exp.get("noise_rng", config.get("noise_rng", "generators"))
                if noise_rng != "generators":  # per-run generators by default
                    spec["noise_rng"] = noise_rng
                if not exp.get("flush_denormal", config.get("flush_denormal", True)):  # on by default
                    spec["flush_denormal"] = False
                specs.append(RunSpec.of(spec))
    return specs


DEFAULT_STACK_SIZE = 32


def experiment_stack_size(config: dict, experiment: str) -> int:
    """The most runs one training job of ``experiment`` stacks (its own ``stack_size``, else
    the global one, else :data:`DEFAULT_STACK_SIZE`)."""
    exp = config["experiments"][experiment]
    return int(exp.get("stack_size") or config.get("stack_size") or DEFAULT_STACK_SIZE)


def stack_jobs(config: dict) -> dict[tuple[str, str, int], list[RunSpec]]:
    """The training jobs of a validated config: (experiment, method, stack index) -> the run
    specs that job trains, consecutive seeds in chunks of the experiment's ``stack_size``."""
    by_key: dict[tuple[str, str], list[RunSpec]] = {}
    for spec in run_specs(config):
        by_key.setdefault((spec["experiment"], spec["method"]), []).append(spec)
    jobs = {}
    for (experiment, method), specs in by_key.items():
        k = experiment_stack_size(config, experiment)
        for i in range(0, len(specs), k):
            jobs[(experiment, method, i // k)] = specs[i:i + k]
    return jobs


def run_dir(spec: dict) -> str:
    return RUN_DIR.format(**spec)

"""What a search may try for a model on a CPU: pipelines built from the recipe registry, not a hand
list. A candidate is an optional front (structured pruning at a few FLOPs ratios, recovered by
self-distillation from the original) followed by a finish: a built-in that serves faster on a CPU
(a CPU engine's export, a cast whose compute the CPU runs natively, an activation-aware transform
folded in before an engine's quantizer). Every chain is checked as CreateJob checks a pipeline
(formats connect, every method takes the model's kind); a compute the CPU would emulate is never a
candidate. The caller narrows the space by technique, and by whether training or calibration data
may be used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelpress.v1 import common_pb2
from services.common.contract.chain import InvalidArgument, Methods, check_chain
from services.common.contract.recipes import RECIPES, SERVED_RUNTIMES, RecipeStage

P, D = common_pb2.TECHNIQUE_PRUNER, common_pb2.TECHNIQUE_DISTILLER
FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
# Structured pruning fronts: the share of FLOPs kept, and the self-distillation that recovers the cut.
PRUNE_KEEP = (0.75, 0.5)
RECOVERY = {"max_minutes": 5.0}
COST_ORDER = {"seconds": 0, "minutes": 1, "tens of minutes": 2}


@dataclass(frozen=True)
class Restrictions:
    """What the caller allows: techniques (empty: all), training (distillation, recovery), calibration data."""

    techniques: frozenset[int] = frozenset()
    training: bool = True
    calibration: bool = True
    # Only candidates ending in these built-ins (empty: all), screened in this order within a cost.
    finishes: tuple[str, ...] = ()
    served: bool = False  # only finishes the serving replicas serve for the model's kind (a search that deploys)

    def allows(self, stages: tuple[RecipeStage, ...], uses: str) -> str:
        """Why the stages are not allowed ("" when they are)."""
        if self.techniques:
            outside = sorted({common_pb2.Technique.Name(s.technique) for s in stages} -
                             {common_pb2.Technique.Name(t) for t in self.techniques})
            if outside:
                return f"uses {', '.join(outside)}, not among the allowed techniques"
        if uses == "training" and not self.training:
            return "trains, and training is not allowed"
        if uses in ("training", "calibration") and not self.calibration:
            return f"uses {uses} data, and calibration is not allowed"
        return ""


@dataclass(frozen=True)
class Candidate:
    name: str
    stages: tuple[RecipeStage, ...]
    uses_data: str  # the most any stage uses: none < calibration < training
    cost: str
    compute: str
    finish: str  # the built-in recipe it ends with
    front: str = ""  # "" or the pruning front's name

    def messages(self) -> list[common_pb2.StageSpec]:
        return [s.message() for s in self.stages]


@dataclass
class Space:
    candidates: list[Candidate]
    # Built-ins and chains left out, with why (a compute the CPU emulates, a kind their methods do not take...).
    left_out: dict[str, str] = field(default_factory=dict)


def _front(keep: float) -> tuple[str, tuple[RecipeStage, ...]]:
    name = f"prune-{round((1 - keep) * 100)}%"
    return name, (RecipeStage(P, "structured", {"target_flops": keep}, "prune"),
                  RecipeStage(D, "distill-self", dict(RECOVERY), "recover"))


def _more(a: str, b: str) -> str:
    order = ("none", "calibration", "training")
    return max(a, b, key=order.index)


def search_space(model_kind: str | None, features, methods: Methods, restrictions: Restrictions = Restrictions()
                 ) -> Space:
    space = Space([])
    finishes = []
    for recipe in RECIPES.values():
        if recipe.compute == "auto" or not recipe.faster_on_cpu:
            continue  # fastest-cpu picks among these very finishes on the worker
        if {s.technique for s in recipe.stages} & {P, D}:
            continue  # a composition of its own (minilm-edge): the fronts below make those
        if why := recipe.emulated_on(features):
            space.left_out[recipe.name] = why
            continue
        if restrictions.finishes and recipe.name not in restrictions.finishes:
            space.left_out[recipe.name] = "not among the finishes asked for"
            continue
        if restrictions.served and recipe.runtimes[0] not in SERVED_RUNTIMES.get(model_kind or "", ()):
            space.left_out[recipe.name] = (f"the serving replicas do not serve a {model_kind or 'model'} through "
                                           f"{recipe.runtimes[0]}, and the winner is to be deployed")
            continue
        finishes.append(recipe)
    fronts = [("", ())] + [_front(keep) for keep in PRUNE_KEEP]
    for front_name, front in fronts:
        for recipe in finishes:
            stages = (*front, *recipe.stages)
            uses = _more("training" if front else "none", recipe.uses_data)
            name = f"{front_name} → {recipe.name}" if front_name else recipe.name
            if why := restrictions.allows(stages, uses):
                space.left_out[name] = why
                continue
            undescribed = [s for s in stages if (s.technique, s.method) not in methods]
            if undescribed:
                space.left_out[name] = (f"{undescribed[0].method} is not offered by a live "
                                        f"{common_pb2.Technique.Name(undescribed[0].technique)} service")
                continue
            try:
                check_chain([s.message() for s in stages], methods, FLOAT, model_kind)
            except InvalidArgument as exc:
                space.left_out[name] = str(exc)
                continue
            cost = "tens of minutes" if front else recipe.cost
            space.candidates.append(Candidate(name=name, stages=stages, uses_data=uses, cost=cost,
                                              compute=recipe.compute, finish=recipe.name, front=front_name))
    # Cheapest first: a budget that runs out leaves the expensive compositions, not the quick screens.
    # Within a cost, the caller's order of finishes (a prior's guess first), then by name.
    order = {name: index for index, name in enumerate(restrictions.finishes)}
    space.candidates.sort(key=lambda c: (COST_ORDER[c.cost], bool(c.front), order.get(c.finish, 0), c.name))
    return space

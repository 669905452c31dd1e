"""Built-in evolution operators (Evol-Instruct): five in depth, which make an instruction
harder, and one in breadth, which writes a new instruction of the same domain. The wording is
tempering's; a recipe replaces it with ``{name: deepen, template: "... {instruction} ..."}``."""

from __future__ import annotations

from tempering import EvolutionOperator, hookimpl

__all__ = ["register_evolution_operators", "DEPTH_FRAME", "BREADTH_FRAME"]

DEPTH_FRAME = (
    "You rewrite instructions so that they are harder to answer well, while a person could "
    "still understand and answer them. {change} Keep whatever the original gives (tables, code, "
    "inputs) and do not answer it. The new instruction adds at most 10 to 20 words to the "
    "original.\n\n#Original Instruction#:\n{instruction}\n\n#New Instruction#:\n")
BREADTH_FRAME = (
    "You write new instructions for an assistant. Take the instruction below as inspiration and "
    "write a brand new one of the same domain, about as long and as hard, but rarer: a task "
    "people seldom ask. Do not answer it.\n\n#Original Instruction#:\n{instruction}\n\n"
    "#New Instruction#:\n")

DEPTH_CHANGES = {
    "add_constraints": "Add one more constraint or requirement the answer must meet.",
    "deepen": "Where the original asks about something, ask for more depth and breadth on it.",
    "concretize": "Replace general ideas in it with more specific, concrete ones.",
    "increase_reasoning": "If it can be solved in a few simple steps, rewrite it so that it "
                          "explicitly needs reasoning over several steps.",
    "complicate_input": "Make the data it works on more involved: give a longer or more "
                        "structured input (a table, code, a list of cases) and ask about it.",
}


def _operator(name: str, change: str) -> EvolutionOperator:
    def prompt(instruction: str, template: str = DEPTH_FRAME) -> str:
        return template.format(instruction=instruction, change=change)

    prompt.__name__ = name
    return EvolutionOperator(name, prompt, "depth", change)


def breadth(instruction: str, template: str = BREADTH_FRAME) -> str:
    return template.format(instruction=instruction)


@hookimpl
def register_evolution_operators() -> list[EvolutionOperator]:
    return [*(_operator(n, c) for n, c in DEPTH_CHANGES.items()),
            EvolutionOperator("breadth", breadth, "breadth",
                              "a new, rarer instruction of the same domain")]

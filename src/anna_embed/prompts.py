"""The only place prompt strings are built: the embedder's, and mining's LLM judge's (:func:`judge_prompt`).

Training, encoding, evaluation and serving all call :func:`query_prefix` / :func:`document_prefix`, and
the templates travel with every saved model (``PromptTemplates.to_dict`` / ``from_dict``).

A query prompt follows the paper: the few-shot block first, then the instruction and the query::

    Instruct: {instruction}
    Query:
    {example query 1}
    Response:
    {example response 1}

    Instruct: {instruction}
    Query:
    {query}

Every template segment that precedes user text ends in a newline. Byte-level BPE tokenizers never merge a
newline into the following word, so ``tokenize(prefix + text)`` always starts with ``tokenize(prefix)``:
that is what lets the embedder reuse the prefix's KV cache exactly and what keeps our tokenization equal
to sentence-transformers' (which tokenizes ``prompt + text`` as one string).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal

from anna_embed.tasks import TaskSpec, get_task

Role = Literal["query", "document"]
Example = tuple[str, str]


@dataclass(frozen=True)
class PromptTemplates:
    """Prompt templates; saved with every model so encode, train and serve agree.

    Attributes:
        query: Prefix of an instructed query; ``{instruction}`` is filled in, the text follows.
        example: One few-shot example; ``{instruction}``, ``{query}`` and ``{response}`` are filled in.
        example_separator: Joins the examples and the final query.
        document: Prefix of a document on an asymmetric task (empty: the raw text).
        symmetric_document: Prefix of the second text on a symmetric task (defaults to the query prefix).
    """

    query: str = "Instruct: {instruction}\nQuery:\n"
    example: str = "Instruct: {instruction}\nQuery:\n{query}\nResponse:\n{response}"
    example_separator: str = "\n\n"
    document: str = ""
    symmetric_document: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> PromptTemplates:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown prompt template keys: {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


DEFAULT_TEMPLATES = PromptTemplates()


def _instruction(task: str | TaskSpec | None, instruction: str | None) -> str | None:
    if instruction is not None:
        return instruction
    if task is None:
        return None
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    return spec.instruction


def format_examples(
    examples: Sequence[Example], instruction: str, templates: PromptTemplates = DEFAULT_TEMPLATES
) -> str:
    """Render few-shot ``(query, response)`` pairs as the block that precedes the query.

    Returns the empty string for no examples, otherwise the examples joined and followed by the separator.
    """
    if not examples:
        return ""
    rendered = [templates.example.format(instruction=instruction, query=q, response=r) for q, r in examples]
    return templates.example_separator.join(rendered) + templates.example_separator


def query_prefix(
    task: str | TaskSpec | None = None,
    *,
    instruction: str | None = None,
    examples: Sequence[Example] = (),
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> str:
    """The string placed before a query: few-shot block + instruction.

    Args:
        task: A registry task (its instruction is used unless ``instruction`` is given).
        instruction: An explicit instruction overriding the task's.
        examples: Few-shot ``(query, response)`` pairs, rendered before the instruction.
        templates: The model's prompt templates.

    Returns:
        The prefix; empty when there is neither a task nor an instruction (and no examples).

    Example:
        >>> query_prefix(instruction="Find X.")
        'Instruct: Find X.\\nQuery:\\n'
    """
    instr = _instruction(task, instruction)
    if instr is None:
        if examples:
            raise ValueError("Few-shot examples need an instruction or a task.")
        return ""
    return format_examples(examples, instr, templates) + templates.query.format(instruction=instr)


def document_prefix(
    task: str | TaskSpec | None = None,
    *,
    instruction: str | None = None,
    examples: Sequence[Example] = (),
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> str:
    """The string placed before a document.

    Asymmetric tasks (retrieval, reranking) embed documents without an instruction (``examples`` must be
    empty). Symmetric tasks (STS, pair classification, clustering, classification, summarization) treat
    every text as a query: the document gets the query prompt with the same few-shot ``examples`` as its
    query (``templates.symmetric_document``, when set, replaces the instruction part), so training and
    evaluation (where mteb gives symmetric texts no role) build the same string for the same text.
    """
    spec = None if task is None else (task if isinstance(task, TaskSpec) else get_task(task))
    if spec is not None and spec.symmetric:
        instr = _instruction(spec, instruction)
        assert instr is not None  # a registered spec always has one
        template = templates.symmetric_document or templates.query
        return format_examples(examples, instr, templates) + template.format(instruction=instr)
    if examples:
        raise ValueError("Few-shot examples apply to queries and symmetric tasks only.")
    return templates.document


def role_of(prompt_type: object) -> Role:
    """Our role for mteb's ``prompt_type`` (``PromptType.document`` -> document; query or None -> query).

    mteb passes ``None`` for symmetric tasks, whose texts take the query-side prompt.
    """
    return "document" if str(getattr(prompt_type, "value", prompt_type)) == "document" else "query"


def build_prompt(
    text: str,
    role: Role,
    task: str | TaskSpec | None = None,
    *,
    instruction: str | None = None,
    examples: Sequence[Example] = (),
    templates: PromptTemplates = DEFAULT_TEMPLATES,
) -> str:
    """The full string fed to the tokenizer for ``text`` in ``role`` (prefix + text).

    The embedder and the training collator both reduce to this function; the tokenizer then appends EOS.
    """
    if role == "query":
        prefix = query_prefix(task, instruction=instruction, examples=examples, templates=templates)
    elif role == "document":
        prefix = document_prefix(task, instruction=instruction, examples=examples, templates=templates)
    else:
        raise ValueError(f"role must be 'query' or 'document', got {role!r}")
    return prefix + text


# ------------------------------------------------------------------------- the LLM judge (mining)

#: The judge's relevance question; ``{instruction}`` is the task's instruction (or a generic one).
JUDGE_PROMPT = (
    "Judge whether the document is relevant to the query.\n"
    "Task: {instruction}\n"
    "Query: {query}\n"
    "Document: {document}\n"
    "Is the document relevant to the query? Answer yes or no."
)
JUDGE_DEFAULT_INSTRUCTION = "Given a query, find documents that answer it."
#: Answer prefix used when the tokenizer has no chat template.
JUDGE_PLAIN_SUFFIX = "\nAnswer:"


def judge_prompt(query: str, document: str, *, instruction: str | None = None) -> str:
    """The relevance question put to the causal-LM judge (before any chat template)."""
    return JUDGE_PROMPT.format(
        instruction=instruction or JUDGE_DEFAULT_INSTRUCTION, query=query, document=document
    )

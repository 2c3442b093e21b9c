"""Data for tulu-lab: benchmark and Tülu-format loaders, few-shot prompts, synthetic generators.

    loaders          load_gsm8k / load_math / load_ifeval / load_popqa, load_sft / load_preference /
                     load_rlvr, load_records; DataFormatError names file, line and field
    fewshot          GSM8K_COT_EXEMPLARS (Wei et al. 2022), MINERVA_MATH_EXEMPLARS (Lewkowycz et al.
                     2022), build_fewshot_messages
    synthetic        GSM-style word problems (default: 1-2 steps, numbers 2..20), make_splits,
                     rlvr_row / sft_row / preference_row
    synthetic_math   MATH-style problems with \\boxed{} answers
    synthetic_ifeval IFEval-style constraint prompts with RLVR ground-truth JSON
    shipped          the GSM8K test, MATH-500 and IFEval files shipped in benchmarks/ (sha256-checked)
"""

from tulu_lab.data.fewshot import (
    GSM8K_COT_EXEMPLARS,
    MINERVA_MATH_EXEMPLARS,
    build_fewshot_messages,
    format_question,
)
from tulu_lab.data.loaders import (
    DataFormatError,
    DataSourceNotFoundError,
    gsm8k_final_answer,
    last_boxed_content,
    load_gsm8k,
    load_ifeval,
    load_math,
    load_popqa,
    load_preference,
    load_records,
    load_rlvr,
    load_sft,
    remove_calculator_annotations,
    validate_messages,
)
from tulu_lab.data.shipped import ShippedDataError, shipped_benchmark, shipped_manifest
from tulu_lab.data.synthetic import (
    GSM_INSTRUCTION,
    TEMPLATE_NAMES,
    WordProblem,
    answer_from_key,
    generate_word_problems,
    gsm_prompt,
    make_splits,
    preference_row,
    rlvr_row,
    sft_row,
    wrong_solution,
)
from tulu_lab.data.synthetic_ifeval import IFEVAL_FUNCTIONS, IFEvalPrompt, generate_ifeval_prompts
from tulu_lab.data.synthetic_math import MATH_INSTRUCTION, MATH_KINDS, MathProblem, generate_math_problems

__all__ = [
    "DataFormatError", "DataSourceNotFoundError", "GSM8K_COT_EXEMPLARS", "GSM_INSTRUCTION", "IFEVAL_FUNCTIONS",
    "IFEvalPrompt", "MATH_INSTRUCTION", "MATH_KINDS", "MINERVA_MATH_EXEMPLARS", "MathProblem", "TEMPLATE_NAMES",
    "WordProblem", "answer_from_key", "build_fewshot_messages",
    "format_question", "generate_ifeval_prompts", "generate_math_problems", "generate_word_problems",
    "gsm8k_final_answer", "gsm_prompt", "last_boxed_content", "load_gsm8k", "load_ifeval", "load_math",
    "load_popqa", "load_preference", "load_records", "load_rlvr", "load_sft", "make_splits",
    "preference_row", "remove_calculator_annotations", "rlvr_row", "ShippedDataError", "sft_row",
    "shipped_benchmark", "shipped_manifest", "validate_messages",
    "wrong_solution",
]

"""Running an engine split over worker processes, and comparing it with one process."""

import gc

import psutil

from tokenmill import LLM, SamplingParams

OPTIONS = dict(dtype="float32", quantization="none", kv_cache_memory=64 * 2**20)


def outputs(llm: LLM, prompts: list[str], max_tokens: int = 24) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def single_process_outputs(model: str | None, prompts: list[str], **options) -> list[list[int]]:
    """One process's greedy tokens, its engine gone before a split one starts."""
    single = LLM(model, **{**OPTIONS, **options})
    try:
        return outputs(single, prompts)
    finally:
        del single
        gc.collect()


def workers() -> list[psutil.Process]:
    """This process's worker processes still running."""
    running = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "tokenmill.distributed.worker" in " ".join(process.cmdline()):
                running.append(process)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass  # it has exited
    return running


def run_split(model: str | None, tensor_parallel_size: int, prompts: list[str], inspect=None, max_tokens: int = 24,
              pipeline_parallel_size: int = 1, prepare=None, **options) -> list[list[int]]:  # fmt: skip
    """The outputs of an engine split over ranks, chunked prefill forced by a small token budget
    (prepare(llm) runs before, inspect(llm) after the run); its workers are gone once it shuts down."""
    llm = LLM(model, tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
              max_num_batched_tokens=32, **{**OPTIONS, **options})
    try:
        assert len(workers()) == tensor_parallel_size * pipeline_parallel_size - 1
        assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks
        if prepare is not None:
            prepare(llm)
        got = outputs(llm, prompts, max_tokens)
        assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks
        if inspect is not None:
            inspect(llm)
        return got
    finally:
        llm.engine.shutdown()
        del llm
        gc.collect()
        psutil.wait_procs(workers(), timeout=10)
        assert not workers()

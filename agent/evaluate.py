"""Evaluation: episodes in envs of their own, from given params, and the media of the first one.

An evaluation at env step N is a pure function of (params, seed, N, eval config): its envs are seeded from
`(seed, "eval/N/envs")`, its jax keys from `(seed, "eval/N/policy")`, it has its own policy carry, and it reads
nothing of the training loop's state (key, replay, envs). So it cannot change the training trajectory, and a run
that redoes an evaluation after a resume writes the same row again. `evaluate_commit` evaluates the newest commit
of a durable store without writing to it (`make eval`); at the same env step and seed it reproduces the row the
run logged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agent import media
from agent.envs import VecEnv
from agent.learner import Learner, make_learner, normalize_obs_spec, params_from_bytes
from agent.records import LoopState, RecordError
from agent.run_config import AgentRunConfig, derived_seed
from agent.world_model import WorldModel
from buffer import read_latest_commit

log = logging.getLogger(__name__)
VIDEO_SCALE = 2  # 64-pixel frames shown at 128 pixels


class EvalError(RuntimeError):
    """An evaluation that cannot run: no commit yet, or a commit of another config."""


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the `eval/*` row of metrics.jsonl summarises it; `make eval` writes it whole as
    `<run>/eval/<commit>.json`."""

    env_steps: int  # the env step of the params evaluated
    seed: int  # the seed the envs and keys were derived from (the run's, unless `make eval SEED=`)
    policy: str  # mode | sample
    returns: tuple[float, ...]  # per episode
    lengths: tuple[int, ...]  # env steps per episode
    successes: tuple[bool, ...] | None  # per episode; None where the env has no notion of success
    truncated: int = 0  # episodes cut at eval.max_steps (counted unsuccessful)
    media: dict[str, str] = field(default_factory=dict)  # kind -> file, relative to the run folder
    commit: int | None = None  # `make eval`: the durable commit evaluated

    def row(self) -> dict[str, float]:
        """The metrics row: means over the episodes."""
        out = {"env_steps": self.env_steps, "eval/return": float(np.mean(self.returns)),
               "eval/length": float(np.mean(self.lengths))}
        if self.successes is not None:
            out["eval/success"] = float(np.mean(self.successes))
        return out

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(returns=list(self.returns), lengths=list(self.lengths),
                 successes=None if self.successes is None else list(self.successes), summary=self.row())
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalResult:
        d = {k: v for k, v in d.items() if k != "summary"}
        succ = d.get("successes")
        return cls(**{**d, "returns": tuple(float(x) for x in d["returns"]),
                      "lengths": tuple(int(x) for x in d["lengths"]),
                      "successes": None if succ is None else tuple(bool(x) for x in succ),
                      "media": dict(d.get("media") or {})})


class _Recording:
    """The first episode of an evaluation, step by step: obs (T+1), actions (T), rewards (T+1)."""

    def __init__(self, obs: dict[str, np.ndarray]):
        self.obs = {k: [v[0].copy()] for k, v in obs.items() if k in ("image", "vector")}
        self.actions: list[int] = []
        self.rewards = [0.0]

    def add(self, action: int, obs: dict[str, np.ndarray]) -> None:
        self.actions.append(int(action))
        for k in self.obs:
            self.obs[k].append(obs[k][0].copy())
        self.rewards.append(float(obs["reward"][0]))

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        return ({k: np.stack(v) for k, v in self.obs.items()}, np.asarray(self.actions, np.int32),
                np.asarray(self.rewards, np.float32))


def _dream(wm: WorldModel, num_actions: int, wm_params, obs: dict, actions: jax.Array, key: jax.Array,
           context: int):
    """Open-loop prediction of one recorded episode. obs {key: (T, ...)}, actions (T,) (action[t] taken after
    obs t) -> (reconstruction (T, 64, 64, 3), imagined (T, 64, 64, 3)) decoder means: the posterior all along,
    and the posterior for the first `context` steps, then the prior fed the recorded actions."""
    steps = actions.shape[0]
    prev = jnp.concatenate([jnp.zeros((1, num_actions)), jax.nn.one_hot(actions[:-1], num_actions)], 0)
    first = jnp.arange(steps) == 0
    k_post, k_img = jax.random.split(key)
    c = wm.cfg
    start = (jnp.zeros((1, c.ssm.layers, c.ssm.hidden), jnp.complex64), jnp.zeros((1, c.stoch_size)))

    def post_step(carry, x):
        o, a, f, k = x
        lat = wm.apply(wm_params, *carry, a[None], f[None], {n: v[None] for n, v in o.items()}, k,
                       method=WorldModel.obs_step)
        return (lat.hidden, lat.stoch), (lat.hidden, lat.deter, lat.stoch)

    _, (hidden, deter, stoch) = jax.lax.scan(post_step, start, (obs, prev, first, jax.random.split(k_post, steps)))

    def img_step(carry, x):
        a, k = x
        lat = wm.apply(wm_params, *carry, a[None], k, method=WorldModel.img_step)
        return (lat.hidden, lat.stoch), (lat.deter, lat.stoch)

    carry = (hidden[context - 1], stoch[context - 1])
    _, (deter_i, stoch_i) = jax.lax.scan(img_step, carry, (prev[context:], jax.random.split(k_img, steps - context)))

    def decode(d, s):
        return wm.apply(wm_params, d[:, 0], s[:, 0], method=WorldModel.decode)["image"]

    recon = decode(deter, stoch)
    return recon, jnp.concatenate([recon[:context], decode(deter_i, stoch_i)], 0)


def crossed(env_steps: int, stride: int, every: int) -> bool:
    """Whether the last `stride` env steps, ending at `env_steps`, crossed a multiple of `every` (0: never)."""
    return every > 0 and env_steps // every > (env_steps - stride) // every


class Evaluator:
    """Evaluation envs (in this process, built at the first evaluation) and the jitted eval policy and dream.

    `run_dir`: the run folder; media go to `<run_dir>/<media_subdir>/`, and None makes none."""

    def __init__(self, cfg: AgentRunConfig, run_dir: Path | None, learner: Learner | None = None,
                 media_subdir: str = "media"):
        self.cfg, self.e, self.run_dir, self.media_subdir = cfg, cfg.eval, run_dir, media_subdir
        self._learner = learner
        self.env: VecEnv | None = None

    def _open(self) -> VecEnv:
        if self.env is None:
            e = self.e
            self.env = VecEnv(self.cfg.env, min(e.envs or e.episodes, e.episodes), seed=0, processes=False)
            spec, n = self.env.obs_spec(), self.env.num_actions
            if self._learner is None:
                self._learner = make_learner(self.cfg.agent, spec, n)
            self.obs_keys = sorted(spec)
            self._policy = jax.jit(functools.partial(self._learner.policy_step, mode=e.policy))
            wm = WorldModel(self.cfg.agent, normalize_obs_spec(spec), n)
            self._dream = jax.jit(functools.partial(_dream, wm, n), static_argnames="context")
        return self.env

    @property
    def learner(self) -> Learner:
        self._open()
        return self._learner

    def maybe_run(self, params, env_steps: int, stride: int) -> EvalResult | None:
        """The evaluation due after the loop's last `stride` env steps, if any (see `crossed`), with media when
        `eval.media_every` is also crossed."""
        if not crossed(env_steps, stride, self.e.every):
            return None
        with_media = self.e.media_every == 0 or crossed(env_steps, stride, self.e.media_every)
        return self.run(params, env_steps, name=f"eval_{env_steps:010d}" if with_media else None)

    def run(self, params, env_steps: int, seed: int | None = None, name: str | None = None) -> EvalResult:
        """`eval.episodes` episodes from `params` (the policy's params tree), seeded by (seed, env_steps);
        media of the first episode under the files `<name>_*` when `name` and a run folder are given."""
        e, env = self.e, self._open()
        seed = self.cfg.seed if seed is None else seed
        env_seed = derived_seed(seed, f"eval/{env_steps}/envs")
        k_act, k_dream = jax.random.split(jax.random.PRNGKey(derived_seed(seed, f"eval/{env_steps}/policy")))
        w = env.num_envs
        returns, lengths, successes, truncated, rec = [], [], [], [], None
        for r in range(-(-e.episodes // w)):
            out = self._round(params, env, env_seed, r, min(w, e.episodes - r * w), jax.random.fold_in(k_act, r))
            rec = out[4] if r == 0 else rec
            for i, lst in enumerate((returns, lengths, successes, truncated)):
                lst += out[i]
        # an episode cut at max_steps has no success of its own: unsuccessful where the env reports success
        succ = tuple(bool(s) for s in successes) if any(s is not None for s in successes) else None
        result = EvalResult(env_steps, seed, e.policy, tuple(returns), tuple(lengths), succ, sum(truncated))
        if name is not None and self.run_dir is not None:
            result = dataclasses.replace(result, media=self._media(params, rec, name, k_dream))
        return result

    def _round(self, params, env: VecEnv, env_seed: int, r: int, n: int, key: jax.Array):
        """Episode r of the first `n` envs, in lockstep; the others' steps are ignored. Each env's episode is
        `episode_seed(env_seed, i, r)`."""
        obs = env.restart(env_seed, r)
        carry = self._learner.init_policy_carry(env.num_envs)
        done = np.arange(env.num_envs) >= n
        ret, length = np.zeros(env.num_envs), np.zeros(env.num_envs, np.int64)
        success: list[bool | None] = [None] * env.num_envs
        cut = [False] * env.num_envs
        rec = _Recording(obs) if r == 0 else None
        t = 0
        while not done.all():
            inputs = {k: jnp.asarray(obs[k]) for k in self.obs_keys}
            k = jax.random.fold_in(key, t)
            carry, action = self._policy(params, carry, inputs, jnp.asarray(obs["is_first"]), k)
            action = np.asarray(jax.device_get(action), np.int32)
            live = ~done
            obs, finished = env.step(action)
            t += 1
            if rec is not None and live[0]:
                rec.add(action[0], obs)
            ret[live] += obs["reward"][live]
            length[live] += 1
            for ep in finished:
                if live[ep.env_index]:
                    ret[ep.env_index], success[ep.env_index] = ep.ret, ep.success
            done |= obs["is_last"]
            if self.e.max_steps and t >= self.e.max_steps:
                for i in np.flatnonzero(~done):
                    cut[i] = True
                done[:] = True
        return ([float(x) for x in ret[:n]], [int(x) for x in length[:n]], success[:n], cut[:n], rec)

    def _media(self, params, rec: _Recording, name: str, key: jax.Array) -> dict[str, str]:
        e, out = self.e, {}
        folder = self.run_dir / self.media_subdir
        obs, actions, rewards = rec.arrays()
        if "image" in obs:
            frames = obs["image"]
            if e.video:
                path = media.write_video(folder / f"{name}_episode", media.upscale(frames, VIDEO_SCALE), e.fps)
                out["episode"] = str(path.relative_to(self.run_dir))
            steps = min(len(frames), e.dream_context + e.dream_steps)
            if e.dream and steps > e.dream_context:
                acts = np.concatenate([actions, [0]])[:steps]  # no action after the last observation
                recon, imag = self._dream(params["wm"], {"image": jnp.asarray(frames[:steps])}, jnp.asarray(acts),
                                          key, context=e.dream_context)
                strip = media.dream_strip(frames[:steps], media.to_uint8(recon), media.to_uint8(imag),
                                          e.dream_context)
                path = media.write_video(folder / f"{name}_dream", media.upscale(strip, VIDEO_SCALE), e.fps)
                out["dream"] = str(path.relative_to(self.run_dir))
            elif e.dream:
                log.info("no dream video at %s: the episode has %d frames, the context alone is %d", name,
                         len(frames), e.dream_context)
        elif "vector" in obs and e.plot:
            path = media.episode_plot(folder / f"{name}_episode.png", obs["vector"], actions, rewards,
                                      self.env.num_actions, f"{self.cfg.env.name}, first eval episode ({name})")
            out["episode"] = str(path.relative_to(self.run_dir))
        return out

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def evaluate_commit(cfg: AgentRunConfig, durable_url: str, run_dir: Path, episodes: int | None = None,
                    seed: int | None = None) -> tuple[EvalResult, Path]:
    """Evaluate the newest commit of `durable_url` read-only (no writer token, nothing written to the store);
    write `<run_dir>/eval/<commit>.json` and the media beside it. Returns (result, path of the JSON)."""
    from agent.train import config_digest  # agent.train imports this module

    restored = read_latest_commit(durable_url)
    if restored is None:
        raise EvalError(f"{durable_url} has no commit yet: nothing to evaluate")
    try:
        loop = LoopState.from_json(restored.extra.get("loop"))
    except RecordError as e:
        raise EvalError(f"the newest commit of {durable_url} is not the training loop's: {e}") from e
    if loop.config_digest not in (config_digest(cfg), config_digest(cfg, legacy=True)):
        raise EvalError(f"the newest commit of {durable_url} was made with another config than the run "
                        f"folder's config.yaml (digest {loop.config_digest} != {config_digest(cfg)})")
    if episodes is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, episodes=episodes))
    ev = Evaluator(cfg, run_dir, media_subdir="eval")
    try:
        params = params_from_bytes(ev.learner, restored.blobs["agent_state"])
        result = ev.run(params, loop.env_steps, seed=seed, name=f"{restored.commit_id:010d}")
    finally:
        ev.close()
    result = dataclasses.replace(result, commit=restored.commit_id)
    path = run_dir / "eval" / f"{restored.commit_id:010d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return result, path

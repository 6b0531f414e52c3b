"""One implementation per operation, a blocking call and an asyncio twin from it.

The convention
--------------
Every call in sandlot that waits for something has two spellings::

    sb = Sandbox.create(["sleep", "1"])            # blocks the calling thread
    sb = await Sandbox.create.aio(["sleep", "1"])  # awaits; the loop keeps running

    code = sb.wait()            |  code = await sb.wait.aio()
    proc = sb.exec(["ls"])      |  proc = await sb.exec.aio(["ls"])
    out = proc.stdout.read()    |  out = await proc.stdout.read.aio()
    for line in proc.stdout:    |  async for line in proc.stdout:

The rule is simply: *append ``.aio`` to the method, then await it*; iterators
support both ``for`` and ``async for``. Both spellings take the same arguments,
return the same values and raise the same exceptions.

How it is built
---------------
Each operation is written once, as a generator (an "op") that yields whatever it
has to wait for and receives the result back::

    @op
    def wait(self, timeout=None):
        resp = yield self._session.request("POST", path, {"timeout": 30.0})
        ...
        return code

What an op may yield:

* a ``sandlot._core.OperationRef`` (anything with ``.result()`` and ``__await__``):
  the sync driver calls ``ref.result()`` (the GIL is released while it waits),
  the async driver does ``await ref`` (the C core wakes the loop through one fd);
* :class:`Blocking` ``(fn, *args)``: a plain function that may block (filesystem,
  starting the runner); called directly, or in the loop's default executor.

If the awaited thing fails, its exception is thrown into the op at the ``yield``,
so ops use ordinary ``try``/``except``. Ops compose with ``yield from``
(``data = yield from self.read_bytes.gen()``). The
drivers :func:`run` and :func:`run_async` run an op; the decorators :class:`op`
(methods), :class:`classop` (classmethods) and :func:`blocking` (functions) turn
it into the public callable with its ``.aio`` twin.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, cast

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - type checkers run on newer Pythons
    ParamSpec = TypeVar  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from typing import Concatenate

    from . import _core

__all__ = ["Op", "Blocking", "BoundOp", "op", "classop", "blocking", "run", "run_async"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

#: What an op generator is: yields awaitables/Blocking, receives their values,
#: returns R. Ops are annotated ``-> Op[R]``; the public callable returns R.
Op = Generator[Any, Any, R]


class Blocking:
    """A blocking function call for an op to yield.

    The sync driver calls it in place; the async driver runs it in the event
    loop's default executor, so the loop never blocks on it.

    Example:
        >>> def op_gen():
        ...     n = yield Blocking(len, "abc")
        ...     return n * 2
        >>> run(op_gen())
        6
        >>> asyncio.run(run_async(op_gen()))
        6
    """

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return f"Blocking({getattr(self.fn, '__qualname__', self.fn)!r})"


#: Set by session.py: ``resend_hook(ref, exc)`` returns a new ref for a request
#: worth sending once more after a runner restart, or None (may block).
resend_hook: Callable[[Any, BaseException], Any] | None = None


def run(gen: Any) -> Any:
    """Drive an op to completion on the calling thread and return its value.

    A non-generator argument is returned unchanged (ops that never wait).
    """
    if not inspect.isgenerator(gen):
        return gen
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is not None:
                item = gen.throw(error)
            else:
                item = gen.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            error = None  # drop the reference: no traceback cycles
        try:
            if isinstance(item, Blocking):
                value = item.fn(*item.args)
            else:
                try:
                    value = cast("_core.OperationRef[Any]", item).result()
                except ConnectionError as exc:  # RunnerUnavailableError and kin
                    again = resend_hook(item, exc) if resend_hook is not None else None
                    if again is None:
                        raise
                    item = None  # the failed ref (and its traceback) can go
                    value = again.result()
        except BaseException as exc:  # noqa: B902 - re-raised inside the op
            value = None
            error = exc


async def run_async(gen: Any) -> Any:
    """Drive an op to completion in the running asyncio loop and return its value.

    When the task is cancelled while a request is in flight, the request is
    cancelled too (it would otherwise hold a long-poll open on the runner).
    """
    if not inspect.isgenerator(gen):
        return gen
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is not None:
                item = gen.throw(error)
            else:
                item = gen.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            error = None
        try:
            if isinstance(item, Blocking):
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(None, functools.partial(item.fn, *item.args))
            else:
                try:
                    try:
                        value = await cast("Awaitable[Any]", item)
                    except ConnectionError as exc:  # RunnerUnavailableError and kin
                        hook = resend_hook
                        if hook is None:
                            raise
                        loop = asyncio.get_running_loop()
                        again = await loop.run_in_executor(None, hook, item, exc)
                        if again is None:
                            raise
                        item = again
                        value = await cast("Awaitable[Any]", item)
                except asyncio.CancelledError:
                    cancel = getattr(item, "cancel", None)
                    if cancel is not None:
                        cancel()
                    raise
        except BaseException as exc:  # noqa: B902 - re-raised inside the op
            value = None
            error = exc


async def _call_async(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    return await run_async(fn(*args, **kwargs))


class BoundOp(Generic[P, R_co]):
    """An op bound to its arguments' owner: call it to block, ``.aio`` to await.

    Example:
        >>> @blocking
        ... def double(x: int):
        ...     y = yield Blocking(int, x)
        ...     return 2 * y
        >>> double(21)
        42
        >>> asyncio.run(double.aio(21))
        42
    """

    __slots__ = ("_fn", "__wrapped__", "__name__", "__qualname__", "__dict__")

    def __init__(self, fn: Callable[P, Op[R_co]]) -> None:
        self._fn = fn
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "op")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        return run(self._fn(*args, **kwargs))  # type: ignore[no-any-return]

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]:
        """The asyncio twin: same arguments, returns a coroutine to await.

        Like any coroutine, nothing runs (not even argument checks) until it is awaited.
        """
        return _call_async(self._fn, args, kwargs)

    def gen(self, *args: P.args, **kwargs: P.kwargs) -> Op[R_co]:
        """The op generator itself, for composing ops: ``x = yield from other.gen(...)``."""
        return self._fn(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        # Show what callers get: "-> Op[Sandbox]" on the generator becomes "-> Sandbox".
        sig = inspect.signature(self._fn)
        ret = sig.return_annotation
        if isinstance(ret, str) and ret.startswith("Op[") and ret.endswith("]"):
            sig = sig.replace(return_annotation=ret[3:-1])
        return sig

    def __repr__(self) -> str:
        return f"<sandlot op {self.__qualname__} (call it, or await .aio(...))>"


class op(Generic[P, R_co]):
    """Decorator for op methods: ``obj.m(...)`` blocks, ``await obj.m.aio(...)`` awaits.

    Example:
        >>> class Counter:
        ...     @op
        ...     def add(self, n: int):
        ...         got = yield Blocking(abs, n)
        ...         return got + 1
        >>> Counter().add(-4)
        5
        >>> asyncio.run(Counter().add.aio(-4))
        5
    """

    def __init__(self, fn: Callable[Concatenate[Any, P], Op[R_co]]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: Any = None) -> BoundOp[P, R_co]:
        if obj is None:
            # Class attribute access: an unbound op taking self first (help(), docs).
            return BoundOp(self._fn)  # type: ignore[arg-type]
        return BoundOp(self._fn.__get__(obj, objtype))


class classop(Generic[P, R_co]):
    """Decorator for op classmethods: ``Cls.m(...)`` blocks, ``await Cls.m.aio(...)`` awaits.

    Example:
        >>> class Thing:
        ...     @classop
        ...     def make(cls, n: int):
        ...         yield Blocking(int, n)
        ...         return cls.__name__ * n
        >>> Thing.make(2)
        'ThingThing'
        >>> asyncio.run(Thing.make.aio(1))
        'Thing'
    """

    def __init__(self, fn: Callable[Concatenate[Any, P], Op[R_co]]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: Any = None) -> BoundOp[P, R_co]:
        cls = objtype if objtype is not None else type(obj)
        return BoundOp(self._fn.__get__(cls, type(cls)))


def blocking(fn: Callable[P, Op[R]]) -> BoundOp[P, R]:
    """Decorator for op functions: ``f(...)`` blocks, ``await f.aio(...)`` awaits."""
    return BoundOp(fn)

"""Starting a lifecycle node: autostart, its executor, a node module's `main()`, and a node process
started by another (spawn_logged)."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def autostart(node) -> bool:
    """Configure then activate a lifecycle node (what `ros2 lifecycle set` would do); True on success.

    A failed transition is logged by the node's callback; the node stays unconfigured/inactive and
    can be driven by a lifecycle manager afterwards.
    """
    from rclpy.lifecycle import TransitionCallbackReturn

    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("configure failed; the node stays unconfigured (see the message above)")
        return False
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("activate failed; the node stays inactive (see the message above)")
        return False
    return True


def spin_until_shutdown(executor) -> None:
    """`executor.spin()` until its context shuts down (SIGINT/SIGTERM, `rclpy.shutdown`), then return.

    rclpy raises ExternalShutdownException for a shutdown it notices before it waits, but RCLError
    ("the given context is not valid") when the shutdown lands between that check and the wait set it
    builds (seen with SIGTERM under load: a traceback in the log, or exit code 1). Both are the
    normal end; an RCLError while the context is still valid is raised.
    """
    from rclpy.executors import ExternalShutdownException
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        if executor.context.ok():
            raise


def stop_spinner(executor, thread, timeout_s: float) -> bool:
    """Stop `executor`, spun by `thread` (`spin_until_shutdown`), and wait for the thread; True when it
    ended, i.e. when the executor's nodes may be destroyed. Destroying a node while the thread's wait set
    still holds it crashed `eval replay` on SIGINT under load (SIGSEGV). After SIGINT/SIGTERM the context is
    already shut down and the spin ends by itself; the executor is woken only while the context is valid,
    as shutting it down then races rclpy's signal thread (the graph's own stop does the same)."""
    if executor.context.ok():
        executor.shutdown(timeout_sec=timeout_s)
    thread.join(timeout=timeout_s)
    if thread.is_alive():
        return False
    executor.shutdown(timeout_sec=timeout_s)  # nothing spins any more: free its thread pool
    return True


def _exit_within(code: int, timeout_s: float) -> None:
    """Shut rclpy down and exit with `code`, at the latest after `timeout_s`: a node that failed to
    start has nothing to save, and its exit was seen to hang once in CI (not reproduced in 50 runs here)."""
    import os
    import threading

    import rclpy

    done = threading.Thread(target=rclpy.try_shutdown, name="shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def executor_for(node):
    """The executor a node is spun by, alone or in a graph: a SingleThreadedExecutor, unless the node
    needs concurrent callbacks (`executor_threads` > 1: the grounding node's waiting queries hold one
    thread each), then a MultiThreadedExecutor with that many threads. Camera-rate streams never go
    on a MultiThreadedExecutor (see stream_spinner.py)."""
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    threads = int(getattr(node, "executor_threads", 1))
    return MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()


def run_lifecycle_node(make_node: Callable[[], Any], args: list[str] | None = None) -> int:
    """`main()` of a node module: init rclpy, build the node, self-activate when its `autostart`
    parameter is true (a failure is logged; the node stays up for a lifecycle manager), spin until
    SIGINT/SIGTERM. Returns the process exit code (1 when autostart failed and `exit_on_failure` is
    set on the node). The DDS transports are the process environment's (see large_image_dds_settings)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with contextlib.suppress(OSError, ValueError):  # no stderr file (captured by a test)
        faulthandler.enable()  # a crash in native code prints every thread's stack to the node's log
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        try:
            node = make_node()
        except ValueError as exc:  # a bad parameter value given at start: one line, exit 2
            logging.getLogger("stvg_ros.nodes").error("%s", exc)
            _exit_within(2, timeout_s=10.0)
        wants_autostart = node.has_parameter("autostart") and bool(node.get_parameter("autostart").value)
        if wants_autostart and not autostart(node) and getattr(node, "exit_on_failure", False):
            return 1
        executor = executor_for(node)
        executor.add_node(node)
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code


def spawn_logged(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` (a node or a graph) in its own process group, output to `log_path`. It gets
    SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG, Linux; call it from the main
    thread: when the process dies, even by SIGKILL), so no node outlives its starter and keeps
    publishing on the domain."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent_hook(),
        )  # fmt: skip


def die_with_parent_hook() -> Callable[[], None]:
    """A `preexec_fn` after which the child gets SIGTERM when the thread that started it ends
    (PR_SET_PDEATHSIG, Linux). libc is loaded here, in the parent: the child only calls it."""
    import ctypes

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

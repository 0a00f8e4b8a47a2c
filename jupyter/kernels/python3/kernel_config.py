"""Config of the kernel that `make figures` runs the notebooks in (the Makefile sets
``JUPYTER_PATH=jupyter``, so this kernelspec stands in for ``python3`` there and nowhere
else): it is the stock ipykernel with one log message dropped, ipykernel's "Kernel is
running over TCP without encryption". papermill starts every kernel over TCP on
localhost and has no option for IPC or CurveZMQ keys, so the warning would print once per
notebook. Every other message of the kernel, and every Python warning, still shows."""

import logging

TCP_WARNING = "Kernel is running over TCP without encryption"


class _NoTcpWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TCP_WARNING)


c = get_config()  # noqa: F821 (defined by traitlets when it loads this file)
c.IPKernelApp.logging_config = {
    "filters": {"no_tcp_warning": {"()": _NoTcpWarning}},
    "handlers": {"console": {"filters": ["no_tcp_warning"]}},
}

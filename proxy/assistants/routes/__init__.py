"""The Assistants API's routes, one module per resource, behind the beta header check."""

from fastapi import APIRouter, Depends

from proxy.assistants.routes import assistants, messages, runs, steps, threads
from proxy.assistants.routes.common import check_beta

router = APIRouter(dependencies=[Depends(check_beta)])
# `runs` first: its `POST /threads/runs` must not be taken for a thread id.
for module in (assistants, runs, threads, messages, steps):
    router.include_router(module.router)

from services.common.runtime.server import run_service
from services.pruner.servicer import register

if __name__ == "__main__":
    run_service("pruner", register)

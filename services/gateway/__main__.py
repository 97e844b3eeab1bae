from services.common.runtime.server import run_service
from services.gateway.servicer import register

if __name__ == "__main__":
    run_service("gateway", register)

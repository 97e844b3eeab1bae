from services.common.runtime.server import run_service
from services.distiller.servicer import register

if __name__ == "__main__":
    run_service("distiller", register)

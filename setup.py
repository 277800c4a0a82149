"""netspec: Caffe's prototxt world, running on PyTorch."""
from setuptools import find_packages, setup

setup(
    name="netspec",
    version="0.1.0",
    description="Run, train and convert Caffe prototxt nets and caffemodels on PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["netspec", "netspec.*"]),
    package_data={"netspec.proto": ["caffe.proto"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "protobuf>=7.35.1,<8",
        "numpy>=1.22",
        "lmdb>=1.4",
        "opencv-python-headless>=4.5,<5",
        "tqdm>=4.60",
        "matplotlib>=3.5",
    ],
    extras_require={
        "datasets": ["scipy>=1.8", "h5py>=3.6"],
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # tools/train.py --tensorboard DIR: torch.utils.tensorboard's SummaryWriter needs the tensorboard package
        "tensorboard": ["tensorboard>=2.10"],
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "grpcio-tools>=1.62", "scipy>=1.8", "h5py>=3.6",
                 "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18", "tensorboard>=2.10"],
    },
)

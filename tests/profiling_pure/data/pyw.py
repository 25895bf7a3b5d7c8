import sys


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def hot_python_loop(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def main():
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        fib(22)
        hot_python_loop(200_000)


main()

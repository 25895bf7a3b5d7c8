#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) unsigned long hot(volatile unsigned long n){unsigned long s=0;for(unsigned long i=0;i<n;i++)s+=i*i;return s;}
__attribute__((noinline)) unsigned long cold(volatile unsigned long n){unsigned long s=0;for(unsigned long i=0;i<n;i++)s+=i^s;return s;}
__attribute__((noinline)) unsigned long recurse(volatile int d){ if(d<=0){ unsigned long s=hot(10000); s+=cold(1000); return s;} return recurse(d-1)+1;}
int main(int c, char**v){ long n=c>1?atol(v[1]):3000; for(long i=0;i<n;i++) sink+=recurse(30); return 0;}

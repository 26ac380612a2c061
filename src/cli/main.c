/* mop command-line tool (placeholder until the CLI lands). */
#include <stdio.h>

#include <libmop/mop.h>

int main(void)
{
    printf("mop %s\n", mop_version());
    return 0;
}

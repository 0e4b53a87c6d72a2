# redislock: PGXS build (make, make install, make installcheck), plus the project's own targets:
#   make deps    install the Debian packages the project needs (as root)
#   make demo    set up a throwaway PostgreSQL and Redis and run the concert-booking demo
#   make test    set up the same and run every suite (regress, isolation, TAP); ends "N passed, N failed"
#   make bench   benchmark against pg_advisory_xact_lock (see bench/)

EXTENSION = redislock
MODULE_big = redislock
OBJS = src/redislock.o src/settings.o src/transport.o src/redis_conn.o src/sentinel.o src/cluster.o src/replicas.o src/deadlock.o src/names.o src/scripts.o src/lock_ops.o \
       src/release.o \
       src/registry.o src/keeper.o src/stats.o \
       src/lock_table.o src/xact.o src/sql_api.o
DATA = sql/redislock--1.0.sql sql/redislock--1.0--1.1.sql sql/redislock--1.1.sql \
       sql/redislock--1.1--1.2.sql sql/redislock--1.2.sql
# make installcheck: the regression and isolation suites against a running server whose redislock.host
# and redislock.port name a Redis (see README, Tests and development)
REGRESS = api input settings upgrade shared
ISOLATION = setup fifo release lease timeout shared
ISOLATION_OPTS = --inputdir=test/isolation
PGFILEDESC = "redislock - distributed locks held in Redis"

LUA_SCRIPTS = acquire release verify info force holders
SHLIB_LINK += -lhiredis -lssl -lcrypto
PG_CPPFLAGS += -I$(srcdir)/src
EXTRA_CLEAN = src/scripts_generated.h src/lua/out

# PostgreSQL 15's PGXS (Debian's postgresql-server-dev-15). Without it only demo, test and bench
# work: they install it first.
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
else
all install:
	@echo "PGXS not found: apt-get install postgresql-server-dev-15 libhiredis-dev libssl-dev, or run make test" >&2; exit 1
endif

src/scripts.o src/scripts.bc: src/scripts_generated.h
src/scripts_generated.h: src/lua/embed.sh src/lua/common.lua $(addprefix src/lua/,$(addsuffix .lua,$(LUA_SCRIPTS)))
	sh src/lua/embed.sh $@ src/lua $(LUA_SCRIPTS)

$(OBJS): src/redislock.h

.PHONY: deps demo test bench
deps:
	bash -c 'source test/lib.sh && rl_install_packages'
demo: deps
	bash test/demo.sh
test: deps
	bash test/run.sh
bench: deps
	bash bench/run.sh

# redislock: PGXS build, plus the project's own targets:
#   make demo    set up a throwaway PostgreSQL and Redis and run the concert-booking demo
#   make test    set up the same and run every suite (regress, isolation, TAP); ends "N passed, N failed"
#   make bench   benchmark against pg_advisory_xact_lock (see bench/)

EXTENSION = redislock
MODULE_big = redislock
OBJS = src/redislock.o src/settings.o src/redis_conn.o src/scripts.o src/lock_ops.o \
       src/lock_table.o src/xact.o src/sql_api.o
DATA = sql/redislock--1.0.sql
PGFILEDESC = "redislock - distributed locks held in Redis"

LUA_SCRIPTS = acquire release verify info
SHLIB_LINK += -lhiredis
PG_CPPFLAGS += -I$(srcdir)/src
EXTRA_CLEAN = src/scripts_generated.h

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

src/scripts.o: src/scripts_generated.h
src/scripts_generated.h: src/lua/embed.sh src/lua/common.lua $(addprefix src/lua/,$(addsuffix .lua,$(LUA_SCRIPTS)))
	sh src/lua/embed.sh $@ src/lua $(LUA_SCRIPTS)

$(OBJS): src/redislock.h

.PHONY: demo test bench
demo:
	bash test/demo.sh
test:
	bash test/run.sh
bench:
	bash bench/run.sh

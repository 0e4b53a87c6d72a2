-- The three concurrency scenarios of the concert-booking service (shared/seeds), as PL/pgSQL that
-- reads, pauses, then writes, with no unique constraint: the redis lock is the only guard.
-- scenario_guard() takes the lock, or does nothing when the session sets scenario.lock = 'off', so
-- the same functions show what happens without the lock.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS redislock;

DROP TABLE IF EXISTS queue_token, wallet, spend_log, seat, reservation_log;
DROP FUNCTION IF EXISTS issue_queue_token(int, int), spend_point(int, int), reserve_seat(int, int, int);
CREATE TABLE queue_token (concert_id int, user_id int, position int);
CREATE TABLE wallet (user_id int, balance int);
CREATE TABLE spend_log (user_id int, ok boolean);
CREATE TABLE seat (concert_id int, seat_no int, reserved_by int);
CREATE TABLE reservation_log (user_id int, ok boolean);

CREATE OR REPLACE FUNCTION scenario_guard(key text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(current_setting('scenario.lock', true), 'on') <> 'off' THEN
    PERFORM redis_wait_lock(key, '30 s');
  END IF;
END $$;

-- Queue: every caller must get a different position.
CREATE OR REPLACE FUNCTION issue_queue_token(concert int, usr int) RETURNS int LANGUAGE plpgsql AS $$
DECLARE pos int;
BEGIN
  PERFORM scenario_guard('concert:' || concert || ':queue');
  SELECT coalesce(max(position), 0) + 1 INTO pos FROM queue_token WHERE concert_id = concert;
  PERFORM pg_sleep(0.01);
  INSERT INTO queue_token VALUES (concert, usr, pos);
  RETURN pos;
END $$;

-- Balance: spend points only while the balance lasts.
CREATE OR REPLACE FUNCTION spend_point(usr int, amount int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE bal int;
BEGIN
  PERFORM scenario_guard('wallet:' || usr);
  SELECT balance INTO bal FROM wallet WHERE user_id = usr;
  IF bal < amount THEN
    INSERT INTO spend_log VALUES (usr, false);
    RETURN false;
  END IF;
  PERFORM pg_sleep(0.01);
  UPDATE wallet SET balance = bal - amount WHERE user_id = usr;
  INSERT INTO spend_log VALUES (usr, true);
  RETURN true;
END $$;

-- Reservation: a seat goes to one user only.
CREATE OR REPLACE FUNCTION reserve_seat(concert int, seat_wanted int, usr int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE holder int;
BEGIN
  PERFORM scenario_guard('concert:' || concert || ':seat:' || seat_wanted);
  SELECT reserved_by INTO holder FROM seat WHERE concert_id = concert AND seat_no = seat_wanted;
  IF holder IS NOT NULL THEN
    INSERT INTO reservation_log VALUES (usr, false);
    RETURN false;
  END IF;
  PERFORM pg_sleep(0.01);
  UPDATE seat SET reserved_by = usr WHERE concert_id = concert AND seat_no = seat_wanted;
  INSERT INTO reservation_log VALUES (usr, true);
  RETURN true;
END $$;

-- The state each run starts from.
CREATE OR REPLACE PROCEDURE scenario_reset() LANGUAGE sql AS $$
  TRUNCATE queue_token, wallet, spend_log, seat, reservation_log;
  INSERT INTO wallet VALUES (1, 50);
  INSERT INTO seat VALUES (7, 42, NULL);
$$;

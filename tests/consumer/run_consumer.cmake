# cmake -P script: install kvtier into PREFIX, configure the project at
# CONSUMER_SOURCE against it in CONSUMER_BUILD, build it, and run its program
# EXECUTABLE (default kvtier_consumer).
if(NOT DEFINED EXECUTABLE)
  set(EXECUTABLE kvtier_consumer)
endif()
file(REMOVE_RECURSE ${PREFIX} ${CONSUMER_BUILD})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${KVTIER_BUILD_DIR} --prefix ${PREFIX})
run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${CONSUMER_BUILD} -DCMAKE_PREFIX_PATH=${PREFIX}
    -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${CONSUMER_BUILD} -j2)
run(${CONSUMER_BUILD}/${EXECUTABLE})
